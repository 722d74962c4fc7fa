"""A simulated environment for BFCL multi-turn tasks: the tools the ReAct agent calls.

BFCL's tasks come with an initial state per API class (a file tree, a trading
account, a car, ...) and function docs. Here the file system and the math API
are executed for real on that state; the other APIs (travel, trading, vehicle,
messaging, posting, tickets) answer from their state and the function's
documented response schema, after checking the required arguments. Every
call takes a realistic latency: local tools a few milliseconds, service APIs
a few hundred (log-normal, seeded), scaled by ``latency_scale``; or, given
``tool_seconds`` (a median and a sigma), every tool draws from that one
log-normal, as the simulator's ``bfcl`` workload does.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import math
import random
import statistics
import time
import zlib
from collections.abc import Callable
from typing import Any

from agentrt.datasets.bfcl import API_DOC_FILES, BfclTask, bfcl_data_dir

# Median latency (seconds) of one call per BFCL API: local tools are quick, service APIs are
# network round trips plus backend work.
API_LATENCY: dict[str, float] = {
    "GorillaFileSystem": 0.01,
    "MathAPI": 0.005,
    "MessageAPI": 0.25,
    "TwitterAPI": 0.3,
    "TicketAPI": 0.25,
    "TradingBot": 0.35,
    "TravelAPI": 0.4,
    "VehicleControlAPI": 0.15,
}



def _call_with_kwargs(method: Callable[..., Any], arguments: dict[str, Any]) -> Any:
    return method(**arguments)

class ToolError(Exception):
    """A tool call the environment rejects (unknown function, bad arguments); the agent sees the message."""


class FileSystem:
    """BFCL's Gorilla file system: a directory tree with a current directory."""

    def __init__(self, state: dict[str, Any]) -> None:
        root = state.get("root") or {"workspace": {"type": "directory", "contents": {}}}
        (self.root_name, tree), *_ = root.items()
        self.root: dict[str, Any] = json.loads(json.dumps(tree))  # private copy: tasks mutate it
        self.path: list[str] = []

    def _cwd(self) -> dict[str, Any]:
        node = self.root
        for part in self.path:
            node = node["contents"][part]
        contents: dict[str, Any] = node.setdefault("contents", {})
        return contents

    def _file(self, name: str) -> dict[str, Any]:
        entry = self._cwd().get(name)
        if entry is None or entry.get("type") != "file":
            raise ToolError(f"no such file: {name}")
        file: dict[str, Any] = entry
        return file

    def _lines(self, name: str) -> list[str]:
        return str(self._file(name).get("content", "")).splitlines() or [""]

    def pwd(self) -> dict[str, Any]:
        return {"current_working_directory": "/" + "/".join([self.root_name, *self.path])}

    def ls(self, a: bool = False) -> dict[str, Any]:
        names = sorted(n for n in self._cwd() if a or not n.startswith("."))
        return {"current_directory_content": names}

    def cd(self, folder: str) -> dict[str, Any]:
        for part in [p for p in folder.split("/") if p and p != "."]:
            if part == "..":
                if self.path:
                    self.path.pop()
                continue
            entry = self._cwd().get(part)
            if entry is None or entry.get("type") != "directory":
                raise ToolError(f"no such directory: {part}")
            self.path.append(part)
        return self.pwd()

    def mkdir(self, dir_name: str) -> dict[str, Any]:
        if dir_name in self._cwd():
            raise ToolError(f"already exists: {dir_name}")
        self._cwd()[dir_name] = {"type": "directory", "contents": {}}
        return {}

    def touch(self, file_name: str) -> dict[str, Any]:
        self._cwd().setdefault(file_name, {"type": "file", "content": ""})
        return {}

    def echo(self, content: str, file_name: str | None = None) -> dict[str, Any]:
        if file_name is None:
            return {"terminal_output": content}
        self._cwd()[file_name] = {"type": "file", "content": content}
        return {"terminal_output": None}

    def cat(self, file_name: str) -> dict[str, Any]:
        return {"file_content": self._file(file_name).get("content", "")}

    def _move(self, source: str, destination: str, keep: bool) -> dict[str, Any]:
        cwd = self._cwd()
        if source not in cwd:
            raise ToolError(f"no such file or directory: {source}")
        entry = json.loads(json.dumps(cwd[source]))
        target = cwd.get(destination)
        if target is not None and target.get("type") == "directory":
            target.setdefault("contents", {})[source] = entry
        else:
            cwd[destination] = entry
        if not keep:
            del cwd[source]
        return {"result": f"{'copied' if keep else 'moved'} {source} to {destination}"}

    def mv(self, source: str, destination: str) -> dict[str, Any]:
        return self._move(source, destination, keep=False)

    def cp(self, source: str, destination: str) -> dict[str, Any]:
        return self._move(source, destination, keep=True)

    def rm(self, file_name: str) -> dict[str, Any]:
        if self._cwd().pop(file_name, None) is None:
            raise ToolError(f"no such file: {file_name}")
        return {"result": f"removed {file_name}"}

    def rmdir(self, dir_name: str) -> dict[str, Any]:
        entry = self._cwd().get(dir_name)
        if entry is None or entry.get("type") != "directory":
            raise ToolError(f"no such directory: {dir_name}")
        if entry.get("contents"):
            raise ToolError(f"directory not empty: {dir_name}")
        del self._cwd()[dir_name]
        return {"result": f"removed {dir_name}"}

    def grep(self, file_name: str, pattern: str) -> dict[str, Any]:
        return {"matching_lines": [line for line in self._lines(file_name) if pattern in line]}

    def sort(self, file_name: str) -> dict[str, Any]:
        return {"sorted_content": "\n".join(sorted(self._lines(file_name)))}

    def tail(self, file_name: str, lines: int = 10) -> dict[str, Any]:
        return {"last_lines": "\n".join(self._lines(file_name)[-max(1, int(lines)) :])}

    def wc(self, file_name: str, mode: str = "l") -> dict[str, Any]:
        content = str(self._file(file_name).get("content", ""))
        counts = {"l": len(content.splitlines()), "w": len(content.split()), "c": len(content)}
        if mode not in counts:
            raise ToolError(f"mode must be one of l, w, c, not {mode!r}")
        return {"count": counts[mode], "type": {"l": "lines", "w": "words", "c": "characters"}[mode]}

    def diff(self, file_name1: str, file_name2: str) -> dict[str, Any]:
        a, b = self._lines(file_name1), self._lines(file_name2)
        changed = [f"- {x}\n+ {y}" for x, y in zip(a, b, strict=False) if x != y]
        changed += [f"- {x}" for x in a[len(b) :]] + [f"+ {y}" for y in b[len(a) :]]
        return {"diff_lines": "\n".join(changed)}

    def du(self, human_readable: bool = False) -> dict[str, Any]:
        def size(node: dict[str, Any]) -> int:
            if node.get("type") == "file":
                return len(str(node.get("content", "")))
            return sum(size(child) for child in node.get("contents", {}).values())

        total = size({"contents": self._cwd()})
        return {"disk_usage": f"{total / 1024:.2f} KB" if human_readable else f"{total} bytes"}

    def find(self, path: str = ".", name: str | None = None) -> dict[str, Any]:
        matches: list[str] = []

        def walk(node: dict[str, Any], prefix: str) -> None:
            for child, entry in node.get("contents", {}).items():
                full = f"{prefix}/{child}"
                if name is None or name in child or fnmatch.fnmatch(child, name):
                    matches.append(full)
                if entry.get("type") == "directory":
                    walk(entry, full)

        walk({"contents": self._cwd()}, path.rstrip("/") or ".")
        return {"matches": matches}


def _numbers(values: Any) -> list[float]:
    if not isinstance(values, list) or not values:
        raise ToolError("numbers must be a non-empty list")
    return [float(v) for v in values]


class MathAPI:
    """BFCL's math API, computed for real."""

    def __init__(self, state: dict[str, Any]) -> None:
        del state  # stateless

    def add(self, a: float, b: float) -> dict[str, Any]:
        return {"result": float(a) + float(b)}

    def subtract(self, a: float, b: float) -> dict[str, Any]:
        return {"result": float(a) - float(b)}

    def multiply(self, a: float, b: float) -> dict[str, Any]:
        return {"result": float(a) * float(b)}

    def divide(self, a: float, b: float) -> dict[str, Any]:
        if float(b) == 0:
            raise ToolError("division by zero")
        return {"result": float(a) / float(b)}

    def power(self, base: float, exponent: float) -> dict[str, Any]:
        return {"result": float(base) ** float(exponent)}

    def square_root(self, number: float, precision: int = 6) -> dict[str, Any]:
        if float(number) < 0:
            raise ToolError("square root of a negative number")
        return {"result": round(math.sqrt(float(number)), int(precision))}

    def absolute_value(self, number: float) -> dict[str, Any]:
        return {"result": abs(float(number))}

    def round_number(self, number: float, decimal_places: int = 0) -> dict[str, Any]:
        return {"result": round(float(number), int(decimal_places))}

    def logarithm(self, value: float, base: float, precision: int = 6) -> dict[str, Any]:
        if float(value) <= 0 or float(base) <= 0 or float(base) == 1:
            raise ToolError("logarithm needs value > 0 and base > 0, base != 1")
        return {"result": round(math.log(float(value), float(base)), int(precision))}

    def percentage(self, part: float, whole: float) -> dict[str, Any]:
        if float(whole) == 0:
            raise ToolError("whole must not be zero")
        return {"result": 100.0 * float(part) / float(whole)}

    def mean(self, numbers: list[float]) -> dict[str, Any]:
        return {"result": statistics.fmean(_numbers(numbers))}

    def standard_deviation(self, numbers: list[float]) -> dict[str, Any]:
        return {"result": statistics.pstdev(_numbers(numbers))}

    def sum_values(self, numbers: list[float]) -> dict[str, Any]:
        return {"result": sum(_numbers(numbers))}

    def max_value(self, numbers: list[float]) -> dict[str, Any]:
        return {"result": max(_numbers(numbers))}

    def min_value(self, numbers: list[float]) -> dict[str, Any]:
        return {"result": min(_numbers(numbers))}

    def si_unit_conversion(self, value: float, unit_in: str, unit_out: str) -> dict[str, Any]:
        prefixes = {"k": 1e3, "M": 1e6, "G": 1e9, "m": 1e-3, "u": 1e-6, "n": 1e-9, "c": 1e-2, "": 1.0}
        def factor(unit: str) -> float:
            return prefixes.get(unit[:-1] if len(unit) > 1 else "", 1.0)
        return {"result": float(value) * factor(unit_in) / factor(unit_out)}

    def imperial_si_conversion(self, value: float, unit_in: str, unit_out: str) -> dict[str, Any]:
        to_si = {"inch": 0.0254, "foot": 0.3048, "yard": 0.9144, "mile": 1609.344, "pound": 0.45359237,
                 "ounce": 0.028349523125, "gallon": 3.785411784, "meter": 1.0, "kilogram": 1.0, "liter": 1.0}
        if unit_in not in to_si or unit_out not in to_si:
            raise ToolError(f"unknown unit; known: {', '.join(sorted(to_si))}")
        return {"result": float(value) * to_si[unit_in] / to_si[unit_out]}


def _response_value(name: str, schema: dict[str, Any], state: dict[str, Any], salt: str) -> Any:
    """A response value: taken from the API's state when it holds that key, else a stable plausible value."""
    if name in state and not isinstance(state[name], dict):
        return state[name]
    kind = schema.get("type", "string")
    digest = zlib.crc32(f"{salt}:{name}".encode())
    if kind in ("integer", "int"):
        return digest % 10_000
    if kind in ("float", "number"):
        return round((digest % 100_000) / 100, 2)
    if kind in ("boolean", "bool"):
        return True
    if kind in ("array", "list", "tuple"):
        return []
    if kind in ("dict", "object"):
        return {k: _response_value(k, v, state, salt) for k, v in schema.get("properties", {}).items()}
    return f"{name}_{digest % 100_000:05d}"


class ServiceAPI:
    """A service API (travel, trading, ...) answered from its initial state and its documented responses."""

    def __init__(self, state: dict[str, Any], docs: dict[str, dict[str, Any]]) -> None:
        self.state = json.loads(json.dumps(state))
        self.docs = docs
        self.log: list[tuple[str, dict[str, Any]]] = []

    def call(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        doc = self.docs[name]
        missing = [p for p in doc["parameters"].get("required", []) if p not in arguments]
        if missing:
            raise ToolError(f"{name}: missing required argument(s): {', '.join(missing)}")
        self.log.append((name, arguments))
        salt = json.dumps([name, arguments], sort_keys=True, default=str)
        response = doc.get("response", {}).get("properties", {})
        return {k: _response_value(k, v, {**self.state, **arguments}, salt) for k, v in response.items()}


@functools.lru_cache(maxsize=1)
def _api_of_function() -> dict[str, str]:
    """Function name -> BFCL API class, from the package's function-doc files."""
    data = bfcl_data_dir()
    index: dict[str, str] = {}
    for api, doc_file in API_DOC_FILES.items():
        with (data / "multi_turn_func_doc" / doc_file).open(encoding="utf-8") as f:
            index.update((json.loads(line)["name"], api) for line in f if line.strip())
    return index


class Environment:
    """The tools of one BFCL task: its API classes initialised from the task's initial state."""

    def __init__(
        self,
        task: BfclTask,
        *,
        latency_scale: float = 1.0,
        seed: int = 0,
        sleep: Callable[[float], None] = time.sleep,
        tool_seconds: tuple[float, float] | None = None,
    ) -> None:
        self.latency_scale = latency_scale
        self.tool_seconds = tool_seconds
        self.sleep = sleep
        self._rng = random.Random(seed)
        self._handlers: dict[str, tuple[str, Callable[[dict[str, Any]], dict[str, Any]]]] = {}
        self.docs = list(task.function_docs)
        api_of = _api_of_function()
        services: dict[str, ServiceAPI] = {}
        local: dict[str, Any] = {}
        for doc in self.docs:
            name, api = doc["name"], api_of.get(doc["name"], "")
            state = task.initial_config.get(api, {})
            if api == "GorillaFileSystem":
                target = local.setdefault(api, FileSystem(state))
            elif api == "MathAPI":
                target = local.setdefault(api, MathAPI(state))
            elif api in API_LATENCY:
                service = services.setdefault(api, ServiceAPI(state, {}))
                service.docs[name] = doc
                self._handlers[name] = (api, functools.partial(service.call, name))
                continue
            else:
                continue
            method = getattr(target, name, None)
            if method is not None:
                self._handlers[name] = (api, functools.partial(_call_with_kwargs, method))

    def tools(self) -> list[dict[str, Any]]:
        """The OpenAI ``tools`` list for this task (BFCL's doc types mapped to JSON Schema)."""
        return [
            {
                "type": "function",
                "function": {
                    "name": d["name"],
                    "description": d.get("description", ""),
                    "parameters": to_json_schema(d["parameters"]),
                },
            }
            for d in self.docs
            if d["name"] in self._handlers
        ]

    def latency(self, name: str) -> float:
        """A draw of this tool's latency: log-normal around its API's median, or around
        ``tool_seconds``' when given."""
        if self.tool_seconds is not None:
            median, sigma = self.tool_seconds
        else:
            median, sigma = API_LATENCY[self._handlers[name][0]], 0.5
        return median * math.exp(self._rng.gauss(0.0, sigma)) * self.latency_scale

    def execute(self, name: str, arguments: Any) -> str:
        """Run one tool call and return the observation the model sees (errors included, never raised)."""
        if name not in self._handlers:
            return json.dumps({"error": f"unknown function {name!r}"})
        if not isinstance(arguments, dict):
            return json.dumps({"error": "arguments must be a JSON object"})
        self.sleep(self.latency(name))
        try:
            result = self._handlers[name][1](arguments)
        except ToolError as e:
            result = {"error": str(e)}
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            result = {"error": f"bad arguments for {name}: {e}"}
        return json.dumps(result, default=str)[:2000]


_TYPES = {"dict": "object", "float": "number", "int": "integer", "tuple": "array", "list": "array",
          "bool": "boolean", "any": None}


def to_json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """BFCL's parameter schema (Python-ish type names) as JSON Schema."""
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type":
            mapped = _TYPES.get(value, value)
            if mapped is not None:
                out["type"] = mapped
        elif key == "properties":
            out["properties"] = {k: to_json_schema(v) for k, v in value.items()}
        elif key == "items" and isinstance(value, dict):
            out["items"] = to_json_schema(value)
        elif key in ("description", "required", "enum", "default"):
            out[key] = value
    return out
