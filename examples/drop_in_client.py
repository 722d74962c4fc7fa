"""Code written for the ``openai`` client works with agentrt after changing one import.

Point it at any agentrt server (``agentrt serve``) or any OpenAI-compatible
one: ``python examples/drop_in_client.py http://localhost:8000/v1``. Inside an
``@agentrt.program`` every request carries the program's headers; outside one
the client is exactly ``openai.OpenAI``.
"""

import sys

import agentrt
from agentrt import OpenAI  # was: from openai import OpenAI

client = OpenAI(base_url=sys.argv[1] if len(sys.argv) > 1 else "http://localhost:8000/v1", api_key="EMPTY")


@agentrt.program
def plan_trip(city: str) -> list[str]:
    model = client.models.list().data[0].id
    days = []
    for day in (1, 2):  # a sequential program: PLAS schedules it by the service it already got
        reply = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": f"One thing to do in {city} on day {day}?"}],
            max_tokens=32,
            temperature=0,
        )
        days.append(reply.choices[0].message.content or "")
    return days


if __name__ == "__main__":
    for day, text in enumerate(plan_trip("Paris"), start=1):
        print(f"day {day}: {text}")
