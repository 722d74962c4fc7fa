"""Real agent frameworks (installed from PyPI) on agentrt's echo engine, with no agentrt code in
the clients they build: programs, call chains, interrupt time, program end, tool decorators.

Each test asks the server (``GET /v1/programs/{id}``) at the end of the program: it must
know the program's name, every call and at least the tool pause as interrupt time; right
after the program returns the server must have ended it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tests.unit.sdk.frameworks import BASE_URL, PAUSE, Server, assert_seen, tool_call

import agentrt
from agentrt.sdk.context import peek

pytest.importorskip("agentrt.serving.inprocess")  # the server extra


@pytest.fixture
def server() -> Server:
    return Server()


@pytest.fixture
def instrumented() -> Iterator[None]:
    agentrt.instrument()
    yield
    agentrt.instrument(threads=True, openai=False)


async def assert_ended_within_a_second(server: Server, program_id: str) -> None:
    deadline = time.monotonic() + 1.0
    while await server.program(program_id) is not None:
        assert time.monotonic() < deadline, "the program was not ended on the server"
        await asyncio.sleep(0.05)


def tool_seconds() -> float:
    """Tool time the current program's hooks and @agentrt.tool reported (the SDK's tally)."""
    b = peek()
    assert b is not None
    return b.strand.record.interrupt_seconds


# ---------------------------------------------------------------------------------- LangChain


async def run_chat_openai(server: Server, llm: Any) -> None:
    """Sequential calls in fresh tasks with a pause between them, then a two-way gather."""
    async with agentrt.program("langchain") as ctx:
        await asyncio.create_task(llm.ainvoke("first"))
        await asyncio.sleep(PAUSE)  # tool work agentrt is told nothing about
        await asyncio.create_task(llm.ainvoke("second"))
        await asyncio.gather(llm.ainvoke("left"), llm.ainvoke("right"))
        info = await server.program(ctx.program_id)
    assert_seen(info, "langchain", calls=4, interrupt=PAUSE)
    assert info is not None
    first, second, *branches = info["calls"]
    assert first["thread_id"] == second["thread_id"] == "0"  # one chain across fresh tasks
    assert first["interrupt_seconds"] >= PAUSE  # the pause followed the first call
    assert {c["thread_id"] for c in branches} == {"0", "1"}  # the gather forked
    await assert_ended_within_a_second(server, ctx.program_id)


@pytest.mark.usefixtures("instrumented")
async def test_langchain_chat_openai_after_instrument(server: Server) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    llm = langchain_openai.ChatOpenAI(
        model="echo", base_url=BASE_URL, api_key="k", http_async_client=server.async_http()
    )
    await run_chat_openai(server, llm)


async def test_langchain_chat_openai_with_instrument_client_alone(server: Server) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    llm = langchain_openai.ChatOpenAI(
        model="echo", base_url=BASE_URL, api_key="k", http_async_client=server.async_http()
    )
    agentrt.instrument_client(llm.root_async_client)
    await run_chat_openai(server, llm)


@pytest.mark.usefixtures("instrumented")
async def test_langchain_tools_and_the_callback_handler(server: Server) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    from langchain_core.tools import tool

    from agentrt.integrations.langchain import AgentrtCallbackHandler

    @agentrt.tool  # above LangChain's decorator: times the tool's function
    @tool
    async def lookup(q: str) -> str:
        """Look q up."""
        await asyncio.sleep(PAUSE)
        return f"found {q}"

    @tool  # below it: LangChain wraps a timed function, with the same schema
    @agentrt.tool
    def search(query: str) -> str:
        """Search for query."""
        time.sleep(PAUSE / 4)
        return "results"

    assert search.args == {"query": {"title": "Query", "type": "string"}}
    llm = langchain_openai.ChatOpenAI(
        model="echo", base_url=BASE_URL, api_key="k", http_async_client=server.async_http()
    ).bind_tools([lookup, search])
    config = {"callbacks": [AgentrtCallbackHandler()]}
    async with agentrt.program("tools") as ctx:
        reply = await llm.ainvoke(tool_call("lookup", q="x"), config=config)
        (call,) = reply.tool_calls
        result = await lookup.ainvoke(call["args"], config=config)
        assert search.invoke({"query": "y"}, config=config) == "results"
        await llm.ainvoke(result, config=config)
        timed = tool_seconds()
        info = await server.program(ctx.program_id)
    assert timed >= PAUSE * 1.25  # both tools, each counted once
    assert_seen(info, "tools", calls=2, interrupt=PAUSE * 1.25)
    await assert_ended_within_a_second(server, ctx.program_id)


def test_a_langchain_tool_without_a_function_is_refused_with_the_order_that_works() -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.tools import BaseTool

    class Custom(BaseTool):
        name: str = "custom"
        description: str = "a tool class"

        def _run(self, *args: Any, **kwargs: Any) -> str:
            return "x"

    with pytest.raises(TypeError, match=r"put @agentrt\.tool below @tool"):
        agentrt.tool(Custom())


@pytest.mark.usefixtures("instrumented")
async def test_langgraph_nodes_are_one_program_thread(server: Server) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    langgraph = pytest.importorskip("langgraph.graph")
    llm = langchain_openai.ChatOpenAI(
        model="echo", base_url=BASE_URL, api_key="k", http_async_client=server.async_http()
    )

    async def draft(state: dict[str, str]) -> dict[str, str]:
        return {"text": (await llm.ainvoke(state["text"])).content}

    async def work(state: dict[str, str]) -> dict[str, str]:
        await asyncio.sleep(PAUSE)
        return state

    async def review(state: dict[str, str]) -> dict[str, str]:
        return {"text": (await llm.ainvoke(state["text"] + " reviewed")).content}

    from typing import TypedDict

    class State(TypedDict):
        text: str

    graph = langgraph.StateGraph(State)
    graph.add_node("draft", draft)
    graph.add_node("work", work)
    graph.add_node("review", review)
    graph.add_edge(langgraph.START, "draft")
    graph.add_edge("draft", "work")
    graph.add_edge("work", "review")
    graph.add_edge("review", langgraph.END)
    app = graph.compile()
    async with agentrt.program("graph") as ctx:
        out = await app.ainvoke({"text": "hello"})
        info = await server.program(ctx.program_id)
    assert out == {"text": "hello reviewed"}
    assert_seen(info, "graph", calls=2, interrupt=PAUSE)
    assert info is not None and {c["thread_id"] for c in info["calls"]} == {"0"}
    await assert_ended_within_a_second(server, ctx.program_id)


# ---------------------------------------------------------------------------------- Agents SDK


def agents_sdk() -> Any:
    agents = pytest.importorskip("agents")
    agents.set_tracing_disabled(True)  # the SDK would export traces to OpenAI
    return agents


async def run_agent(
    server: Server,
    agents: Any,
    client: Any,
    tool: Any,
    name: str,
    api: str = "chat_completions",
    hooks: bool = True,
) -> None:
    from agentrt.integrations.openai_agents import AgentrtRunHooks

    if api == "responses":
        model = agents.OpenAIResponsesModel(model="echo", openai_client=client)
    else:
        model = agents.OpenAIChatCompletionsModel(model="echo", openai_client=client)
    agent = agents.Agent(name="a", instructions="Be brief.", tools=[tool], model=model)
    async with agentrt.program(name) as ctx:
        run_hooks = AgentrtRunHooks() if hooks else None
        result = await agents.Runner.run(agent, tool_call("lookup", q="x"), hooks=run_hooks)
        timed = tool_seconds()
        info = await server.program(ctx.program_id)
    assert result.final_output == "found x"
    if hooks:
        assert timed >= PAUSE  # the hooks reported the tool run
    else:
        assert timed == 0.0  # nothing timed the tool: the server saw the gap
    assert_seen(info, name, calls=2, interrupt=PAUSE)
    await assert_ended_within_a_second(server, ctx.program_id)


@pytest.mark.usefixtures("instrumented")
@pytest.mark.parametrize("order", ["agentrt-above", "agentrt-below"])
async def test_agents_sdk_chat_completions_with_a_function_tool(server: Server, order: str) -> None:
    agents = agents_sdk()
    import openai

    async def lookup(q: str) -> str:
        """Look q up."""
        await asyncio.sleep(PAUSE)
        return f"found {q}"

    if order == "agentrt-above":
        tool = agentrt.tool(agents.function_tool(lookup))
    else:
        tool = agents.function_tool(agentrt.tool(lookup))
    assert tool.params_json_schema["properties"] == {"q": {"title": "Q", "type": "string"}}
    client = openai.AsyncOpenAI(base_url=BASE_URL, api_key="k", http_client=server.async_http())
    await run_agent(server, agents, client, tool, "agent")


@pytest.mark.usefixtures("instrumented")
async def test_agents_sdk_responses_model_api_with_a_function_tool(server: Server) -> None:
    """The SDK's default model API: ``/v1/responses``, the tool call and its output as items."""
    agents = agents_sdk()
    import openai

    @agents.function_tool
    async def lookup(q: str) -> str:
        """Look q up."""
        await asyncio.sleep(PAUSE)
        return f"found {q}"

    client = openai.AsyncOpenAI(base_url=BASE_URL, api_key="k", http_client=server.async_http())
    await run_agent(server, agents, client, lookup, "agent-responses", api="responses")
    first, second = server.engine.requests[-2:]
    assert first.tools is not None and first.tools[0]["function"]["name"] == "lookup"
    assert [m["role"] for m in second.messages] == ["system", "user", "assistant", "tool"]
    assert second.messages[-1]["content"] == "found x"


@pytest.mark.usefixtures("instrumented")
@pytest.mark.parametrize("api", ["chat_completions", "responses"])
async def test_agents_sdk_without_hooks_or_decorators(server: Server, api: str) -> None:
    agents = agents_sdk()
    import openai

    @agents.function_tool
    async def lookup(q: str) -> str:
        """Look q up."""
        await asyncio.sleep(PAUSE)
        return f"found {q}"

    client = openai.AsyncOpenAI(base_url=BASE_URL, api_key="k", http_client=server.async_http())
    await run_agent(server, agents, client, lookup, f"agent-bare-{api}", api=api, hooks=False)


async def test_agents_sdk_responses_model_api_streamed(server: Server) -> None:
    agents = agents_sdk()
    import openai

    @agents.function_tool
    async def lookup(q: str) -> str:
        """Look q up."""
        return f"found {q}"

    client = openai.AsyncOpenAI(base_url=BASE_URL, api_key="k", http_client=server.async_http())
    model = agents.OpenAIResponsesModel(model="echo", openai_client=client)
    agent = agents.Agent(name="a", instructions="Be brief.", tools=[lookup], model=model)
    result = agents.Runner.run_streamed(agent, tool_call("lookup", q="y"))
    kinds = [event.type async for event in result.stream_events()]
    assert result.final_output == "found y"
    assert "raw_response_event" in kinds and "run_item_stream_event" in kinds


async def test_agents_sdk_with_instrument_client_alone(server: Server) -> None:
    agents = agents_sdk()
    import openai

    @agents.function_tool
    async def lookup(q: str) -> str:
        """Look q up."""
        await asyncio.sleep(PAUSE)
        return f"found {q}"

    client = openai.AsyncOpenAI(base_url=BASE_URL, api_key="k", http_client=server.async_http())
    agentrt.instrument_client(client)
    await run_agent(server, agents, client, lookup, "agent-one-client")


def test_agents_sdk_objects_that_are_no_function_tool_are_refused() -> None:
    agents = agents_sdk()
    with pytest.raises(TypeError, match=r"put @agentrt\.tool below @function_tool"):
        agentrt.tool(agents.WebSearchTool())


# ---------------------------------------------------------------------------------- pydantic-ai


@pytest.mark.usefixtures("instrumented")
@pytest.mark.parametrize("order", ["tool-object", "agentrt-below", "no-decorator"])
async def test_pydantic_ai_agent_with_a_tool(server: Server, order: str) -> None:
    pydantic_ai = pytest.importorskip("pydantic_ai")
    import openai
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    async def lookup(q: str) -> str:
        """Look q up."""
        await asyncio.sleep(PAUSE)
        return f"found {q}"

    client = openai.AsyncOpenAI(base_url=BASE_URL, api_key="k", http_client=server.async_http())
    model = OpenAIChatModel("echo", provider=OpenAIProvider(openai_client=client))
    if order == "tool-object":
        agent = pydantic_ai.Agent(model, tools=[agentrt.tool(pydantic_ai.Tool(lookup))])
    elif order == "agentrt-below":
        agent = pydantic_ai.Agent(model)
        agent.tool_plain(agentrt.tool(lookup))
    else:  # the interrupt is the gap between the calls alone
        agent = pydantic_ai.Agent(model)
        agent.tool_plain(lookup)
    async with agentrt.program("pydantic-ai") as ctx:
        result = await agent.run(tool_call("lookup", q="x"))
        timed = tool_seconds()
        info = await server.program(ctx.program_id)
    assert result.output == "found x"
    if order == "no-decorator":
        assert timed == 0.0  # nothing timed the tool: the server saw the gap
    else:
        assert timed >= PAUSE  # @agentrt.tool timed the function inside the tool
    assert_seen(info, "pydantic-ai", calls=2, interrupt=PAUSE)
    await assert_ended_within_a_second(server, ctx.program_id)
