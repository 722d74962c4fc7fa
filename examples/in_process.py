"""The in-process engine from asyncio: a fan-out of parallel calls, streamed token by token.

``agentrt.AsyncOpenAI(app=...)`` talks to an agentrt app running in this
process. The tasks started by ``asyncio.gather`` inside the program are
threads of that one program: ATLAS schedules the program by its critical path.
Run it with ``python examples/in_process.py``.
"""

import asyncio

import agentrt

app = agentrt.serve_in_process()  # the embedded default model; pass an EngineConfig to choose another


@agentrt.program
async def compare_cities(cities: list[str]) -> dict[str, str]:
    client = agentrt.AsyncOpenAI(app=app)
    model = (await client.models.list()).data[0].id

    async def describe(city: str) -> str:
        stream = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": f"Describe {city} in one sentence."}],
            max_tokens=40,
            temperature=0,
            stream=True,
        )
        parts = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
        return "".join(parts)

    answers = await asyncio.gather(*(describe(city) for city in cities))
    return dict(zip(cities, answers, strict=True))


if __name__ == "__main__":
    for city, text in asyncio.run(compare_cities(["Paris", "Tokyo", "Lima"])).items():
        print(f"{city}: {text}")
