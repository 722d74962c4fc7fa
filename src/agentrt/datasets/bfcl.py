"""BFCL v4 multi-turn function-calling tasks from the ``bfcl-eval`` package's data files.

Only the JSON-lines data files are read (the package's evaluator and its heavy
dependencies are never imported). A task is a sequence of user turns against a
set of stateful APIs; the prompt of every LLM call carries the docs of the
functions of the task's APIs, and the package's ``possible_answer`` files give
the function calls a correct agent makes in each turn (:func:`parse_call` reads
one). How long a tool takes is not in the data: :data:`TOOL_SECONDS` is the one
model of it, shared by the simulator's ``bfcl`` workload and the ReAct agent's
scripted tool policy.
"""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path
from typing import Any, Literal

import msgspec

from agentrt.datasets.sharegpt import DatasetMissing

# A tool call's latency in seconds, log-normal: (median, sigma of the log).
TOOL_SECONDS = (0.3, 0.8)

Category = Literal["base", "long_context", "miss_func", "miss_param"]
CATEGORIES: tuple[Category, ...] = ("base", "long_context", "miss_func", "miss_param")

# BFCL's API class name -> its function-doc file under data/multi_turn_func_doc/.
API_DOC_FILES: dict[str, str] = {
    "GorillaFileSystem": "gorilla_file_system.json",
    "MathAPI": "math_api.json",
    "MessageAPI": "message_api.json",
    "TwitterAPI": "posting_api.json",
    "TicketAPI": "ticket_api.json",
    "TradingBot": "trading_bot.json",
    "TravelAPI": "travel_booking.json",
    "VehicleControlAPI": "vehicle_control.json",
}


class BfclTask(msgspec.Struct, frozen=True, kw_only=True):
    """One multi-turn task.

    ``turns[i]`` holds the user messages of turn i (OpenAI ``role``/``content``
    dicts; empty in ``miss_func`` tasks on the turn where a held-back function
    is revealed). ``ground_truth[i]`` lists the calls a correct agent makes in
    turn i, as Python call expressions (``"cd(folder='document')"``).
    """

    id: str
    category: Category
    turns: list[list[dict[str, str]]]
    apis: list[str]
    function_docs: list[dict[str, Any]]
    ground_truth: list[list[str]]
    initial_config: dict[str, Any] = {}
    missed_function: dict[str, list[str]] = {}


def bfcl_data_dir() -> Path:
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetMissing("BFCL needs the package: pip install --no-deps bfcl-eval")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _function_docs(data: Path, apis: list[str], excluded: set[str]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for api in apis:
        if api not in API_DOC_FILES:
            raise ValueError(f"BFCL task uses an API with no known doc file: {api}")
        docs.extend(
            d
            for d in _read_jsonl(data / "multi_turn_func_doc" / API_DOC_FILES[api])
            if d["name"] not in excluded
        )
    return docs


def load_bfcl_tasks(
    categories: tuple[Category, ...] = CATEGORIES, limit: int | None = None
) -> list[BfclTask]:
    """Tasks of the given multi-turn categories, in file order (at most ``limit`` in all)."""
    data = bfcl_data_dir()
    tasks: list[BfclTask] = []
    for category in categories:
        if category not in CATEGORIES:
            raise ValueError(f"unknown BFCL category {category!r}; expected one of {CATEGORIES}")
        name = f"BFCL_v4_multi_turn_{category}.json"
        answers = {a["id"]: a["ground_truth"] for a in _read_jsonl(data / "possible_answer" / name)}
        for record in _read_jsonl(data / name):
            if limit is not None and len(tasks) >= limit:
                return tasks
            apis = list(record["involved_classes"])
            tasks.append(
                BfclTask(
                    id=record["id"],
                    category=category,
                    turns=record["question"],
                    apis=apis,
                    function_docs=_function_docs(
                        data, apis, set(record.get("excluded_function", []))
                    ),
                    ground_truth=answers.get(record["id"], [[] for _ in record["question"]]),
                    initial_config=record.get("initial_config", {}),
                    missed_function=record.get("missed_function", {}),
                )
            )
    return tasks


def parse_call(expression: str, docs: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """A ground-truth call (``"cd(folder='document')"``) as its function name and keyword
    arguments; positional arguments are named after the function's documented parameters,
    in order. Raises ValueError for anything but a call of a name with literal arguments."""
    try:
        node = ast.parse(expression.strip(), mode="eval").body
    except SyntaxError as e:
        raise ValueError(f"not a call expression: {expression!r}") from e
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ValueError(f"not a call of a function name: {expression!r}")
    name = node.func.id
    try:
        arguments = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg is not None}
        positional = [ast.literal_eval(a) for a in node.args]
    except ValueError as e:
        raise ValueError(f"arguments are not literals: {expression!r}") from e
    if positional:
        doc = next((d for d in docs if d.get("name") == name), None)
        params = list((doc or {}).get("parameters", {}).get("properties", {}))
        if len(positional) > len(params):
            raise ValueError(
                f"{name}: {len(positional)} positional arguments, {len(params)} documented"
            )
        arguments = {**dict(zip(params, positional, strict=False)), **arguments}
    return name, arguments
