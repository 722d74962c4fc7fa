"""A framework's agent on agentrt: the OpenAI Agents SDK, one tool, the embedded engine.

Run it with ``python examples/framework_agent.py`` (``pip install "agentrt[openai-agents]"``).
The Agents SDK builds its own calls; ``agentrt.instrument()`` makes them
carry the program, so the scheduler sees the agent's turns as one program
and the tool's run as its interruption.
"""

import asyncio

from agents import Agent, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled

import agentrt

agentrt.instrument()
set_tracing_disabled(True)  # the SDK's tracing exports to OpenAI's servers by default

app = agentrt.serve_in_process()


@function_tool
@agentrt.tool
def capital_of(country: str) -> str:
    """The capital city of a country."""
    return {"France": "Paris", "Italy": "Rome", "Japan": "Tokyo"}.get(country, "unknown")


@agentrt.program("travel-agent")
async def travel_agent(question: str) -> str:
    client = agentrt.AsyncOpenAI(app=app)
    model = (await client.models.list()).data[0].id
    agent = Agent(
        name="guide",
        instructions="Answer in one short sentence. Use the capital_of tool for capitals.",
        tools=[capital_of],
        model=OpenAIChatCompletionsModel(model=model, openai_client=client),
    )
    result = await Runner.run(agent, question, max_turns=4)
    return str(result.final_output)


if __name__ == "__main__":
    print(asyncio.run(travel_agent("What is the capital of France?")))
