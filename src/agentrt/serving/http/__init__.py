"""The OpenAI-compatible HTTP app: endpoints, request intake, renderers, errors, auth, limits, metrics."""
