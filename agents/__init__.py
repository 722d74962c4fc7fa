"""Reference agent programs: the workloads of ``agentrt bench`` and runnable documentation of the SDK."""
