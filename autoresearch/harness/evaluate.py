"""The frozen metric: score an exported model in a fresh process that holds no code from train.py.

    python -m autoresearch.harness.evaluate --program model.pt2 --workspace DIR --out result.json \
        [--expect-fingerprint HEX] [--then-test test.json]

The parent starts it through `protocol.run_evaluator`: Python's isolated mode, an empty working folder and
an allowlisted environment, so nothing the candidate wrote is on its import path. What it enforces, in
order, each failure with its class for the ledger:

  harness    the `autoresearch` package it imported hashes to the fingerprint the parent expected.
  archive    the program file is data, never code. The .pt2 archive (a zip) is read here, not by torch:
             only the files torch.export.save writes, stored uncompressed; weights and constants as raw
             tensor bytes (no entry marked `use_pickle`, no custom or opaque object); the graph JSON
             checked field by field (ATen targets, names that are identifiers, no symbolic expressions,
             which sympy would evaluate, no guard code, which torch would exec). torch then loads an
             archive rebuilt from those checked parts; its pickled sample inputs are never read.
  graph      ATen ops only (plus two wrappers of grad mode and autocast), no random ops, and no state:
             nothing in the program writes to a parameter, buffer, constant or input, and its only
             outputs are its logits. A stateless, deterministic program cannot tell a scored call from
             a probing one.
  shape      logits of shape (B, T, >= vocab); columns beyond the real vocabulary are dropped before
             anything is computed from them.
  causality  the harness's own log-probabilities at positions <= t do not change when every token after
             t is replaced by other real validation text. Every position 0..T-2 is such a cut in some row
             (a random permutation of positions over ceil((T-1)/B) randomly chosen scored batches), and
             the reference is what was scored, compared with an absolute tolerance in nats.

With --then-test, the same process goes on to score the test split once the val result is written (the
same checks, a fresh load and fresh draws): the parent decides on val alone, and stops this process unless
the model is kept, so a kept model's test score costs no second start-up (imports, verification, data).

Scoring and probing each load the program afresh, in an order drawn with `secrets`; the cuts, the probed
batches and the donor rows are drawn the same way, so a candidate can predict none of them. Scoring runs
the program on the pinned validation rows (the same rows for every experiment, a fixed token count),
computes cross-entropy from the logits and turns it into bits per byte with the token-bytes table.
Special tokens (0 bytes) count in neither sum.
"""

from __future__ import annotations

import argparse
import io
import json
import keyword
import math
import operator
import os
import re
import secrets
import stat
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.export import pt2_archive
from torch.export.pt2_archive import constants as pt2

from .loader import eval_batches
from .prepare import require_prepared
from .settings import Settings, harness_fingerprint
from .tokenizer import Tokenizer, load_token_bytes

ALLOWED_NAMESPACES = {"aten"}
ALLOWED_HIGHER_ORDER = {"wrap_with_set_grad_enabled", "wrap_with_autocast"}

# Largest change of a log-probability (nats) at positions <= t allowed when only tokens after t change.
# fp32 on CPU, measured on a trained GPT of the template (cpu profile, 256 spliced rows): an honest model
# computes the prefix of a spliced row bit for bit as it scored it (change 0.0: rows never mix, and the
# attention mask zeroes the future exactly), while adding +0.001 to the next token's logit shows as 0.001,
# and the +30 peek as ~32. bf16 autocast on CUDA (not measured here: no GPU) rounds logits to 8 bits of
# mantissa; kernels are deterministic for one shape, so the prefix should match exactly there too, and the
# bound leaves room for a few bf16 ulps if it does not. A peek under the tolerance gains at most
# tolerance / (ln 2 * bytes per token) bits per byte: < 5e-5 on CPU, < 5e-3 with the CUDA bound.
CAUSAL_TOLERANCE = {"cpu": 1e-4, "cuda": 1e-2}


class EvalError(Exception):
    """An integrity or shape failure, with a class for the ledger (archive, graph, shape, causality...)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


# ---------------------------------------------------------------------------
# The harness it runs on

def verify_harness(expected: str) -> Path:
    """The folder of the `autoresearch` package this process imported, after checking that it hashes to
    the fingerprint the parent computed for the package it runs itself."""
    import autoresearch

    root = Path(autoresearch.__file__).resolve().parent
    actual = harness_fingerprint(root)
    if actual != expected:
        raise EvalError("harness", f"the evaluator imported the harness from {root}, whose fingerprint "
                        f"{actual[:12]} is not the parent's {expected[:12]}: a different or edited package")
    return root


# ---------------------------------------------------------------------------
# The archive: data, never code

MAX_ARCHIVE_BYTES = 64 * 2**30
MODEL = "model"                                         # the one program name torch.export.save writes
MODEL_JSON = pt2.MODELS_FILENAME_FORMAT.format(MODEL)
WEIGHTS_JSON = pt2.WEIGHTS_CONFIG_FILENAME_FORMAT.format(MODEL)
CONSTANTS_JSON = pt2.CONSTANTS_CONFIG_FILENAME_FORMAT.format(MODEL)
SAMPLE_INPUTS = pt2.SAMPLE_INPUTS_FILENAME_FORMAT.format(MODEL)  # a pickle: dropped unread
FIXED_FILES = {pt2.ARCHIVE_FORMAT_PATH, pt2.ARCHIVE_VERSION_PATH, "byteorder", ".data/version",
               ".data/serialization_id", MODEL_JSON, WEIGHTS_JSON, CONSTANTS_JSON, SAMPLE_INPUTS}
PAYLOADS = {WEIGHTS_JSON: (pt2.WEIGHTS_DIR, pt2.WEIGHT_FILENAME_PREFIX),
            CONSTANTS_JSON: (pt2.CONSTANTS_DIR, pt2.TENSOR_CONSTANT_FILENAME_PREFIX)}

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")               # a node, value or argument name
FQN = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*\Z")        # a parameter, buffer or submodule path
ATEN_TARGET = re.compile(r"torch\.ops\.aten\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+\Z")
HOP_TARGETS = {f"torch.ops.higher_order.{name}" for name in ALLOWED_HIGHER_ORDER}
SCALAR_ARGUMENTS = {"as_none", "as_int", "as_ints", "as_float", "as_floats", "as_string", "as_strings",
                    "as_bool", "as_bools", "as_scalar_type", "as_memory_format", "as_layout",
                    "as_int_lists", "as_float_lists"}
INPUT_SPECS = {"user_input": {"arg"}, "parameter": {"arg", "parameter_name"},
               "buffer": {"arg", "buffer_name", "persistent"}, "tensor_constant": {"arg", "tensor_constant_name"}}
OUTPUT_SPECS = {"user_output": {"arg"}}
MODEL_KEYS = {"graph_module", "opset_version", "range_constraints", "schema_version", "verifiers",
              "torch_version", "guards_code"}
GRAPH_KEYS = {"inputs", "outputs", "nodes", "tensor_values", "sym_int_values", "sym_bool_values",
              "sym_float_values", "custom_obj_values", "is_single_tensor_return"}
NODE_KEYS = {"target", "inputs", "outputs", "metadata", "is_hop_single_tensor_return", "name"}
TENSOR_META_KEYS = {"dtype", "sizes", "requires_grad", "device", "strides", "storage_offset", "layout"}
PAYLOAD_KEYS = {"path_name", "is_param", "use_pickle", "tensor_meta"}


def _refuse(message: str):
    raise EvalError("archive", message)


def _keys(obj, allowed: set, where: str) -> dict:
    if not isinstance(obj, dict):
        _refuse(f"{where} is not an object")
    if extra := set(obj) - allowed:
        _refuse(f"unexpected field(s) {sorted(extra)} in {where}")
    return obj


def _name(value, where: str, pattern=NAME) -> str:
    if not isinstance(value, str) or not pattern.match(value) or keyword.iskeyword(value):
        _refuse(f"{where} {value!r} is not a plain name")
    return value


def _list(obj, where: str) -> list:
    if not isinstance(obj, list):
        _refuse(f"{where} is not a list")
    return obj


def _empty(obj, where: str) -> None:
    if obj not in ({}, [], None):
        _refuse(f"{where} must be empty (no symbolic shapes, custom objects or guard code): {str(obj)[:80]}")


def read_archive(path: Path) -> dict[str, bytes]:
    """The files of the .pt2 archive at `path`, by name inside its root folder. Refuses a path that is not
    a regular file, an archive that is not a plain zip of stored entries, and any file torch.export.save
    does not write."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        raise EvalError("export", f"could not open the exported model: {e}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_ARCHIVE_BYTES:
            _refuse(f"{path.name} is not a regular file of at most {MAX_ARCHIVE_BYTES} bytes")
        data = f.read()
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        entries = archive.infolist()
    except (zipfile.BadZipFile, ValueError) as e:
        _refuse(f"{path.name} is not a zip archive: {e}")
    roots = {entry.filename.split("/", 1)[0] for entry in entries}
    if len(roots) != 1 or len({entry.filename for entry in entries}) != len(entries):
        _refuse(f"the archive must hold one root folder and no duplicate names (roots: {sorted(roots)[:5]})")
    files = {}
    for entry in entries:
        name = entry.filename.split("/", 1)[-1]
        if entry.compress_type != zipfile.ZIP_STORED or entry.flag_bits & 0x1:
            _refuse(f"{name} is compressed or encrypted (torch.export.save stores every file as is)")
        if name not in FIXED_FILES and not _payload_name(name):
            _refuse(f"unexpected file {name!r} in the archive (only what torch.export.save writes is read)")
        files[name] = archive.read(entry)
    for required in (pt2.ARCHIVE_FORMAT_PATH, pt2.ARCHIVE_VERSION_PATH, MODEL_JSON, WEIGHTS_JSON, CONSTANTS_JSON):
        if required not in files:
            _refuse(f"the archive has no {required}")
    return files


def _payload_name(name: str) -> bool:
    return any(re.fullmatch(re.escape(folder + prefix) + r"\d+", name) for folder, prefix in PAYLOADS.values())


def _json(files: dict[str, bytes], name: str):
    try:
        return json.loads(files[name])
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        _refuse(f"{name} is not valid JSON: {e}")


def check_tensor_meta(meta, where: str) -> None:
    """Static sizes, strides and offset (plain integers: a symbolic expression would go to sympy)."""
    _keys(meta, TENSOR_META_KEYS, where)
    for field in ("sizes", "strides"):
        if not isinstance(meta.get(field), list):
            _refuse(f"{where} has no list of {field}")
        for value in meta[field]:
            _keys(value, {"as_int"}, f"{where} {field}")
    _keys(meta.get("storage_offset"), {"as_int"}, f"{where} storage_offset")
    _keys(meta.get("device"), {"type", "index"}, f"{where} device")


def check_payloads(config, folder: str, prefix: str, files: dict[str, bytes], where: str) -> set[str]:
    """Every entry of a weights or constants config is a tensor stored as raw bytes in `folder`; returns
    the payload files it names."""
    _keys(config, {"config"}, where)
    if not isinstance(config["config"], dict):
        _refuse(f"{where} has no config object")
    used = set()
    for fqn, entry in config["config"].items():
        _name(fqn, f"{where}: tensor", FQN)
        _keys(entry, PAYLOAD_KEYS, f"{where} {fqn}")
        if entry.get("use_pickle") is not False:
            _refuse(f"{where}: {fqn} is a pickled entry (use_pickle): the evaluator reads tensors, never pickles")
        path_name = entry.get("path_name")
        if not isinstance(path_name, str) or not re.fullmatch(re.escape(prefix) + r"\d+", path_name):
            _refuse(f"{where}: {fqn} is stored as {path_name!r}, not as a tensor file {prefix}N "
                    "(custom and opaque objects are refused)")
        if folder + path_name not in files:
            _refuse(f"{where}: {fqn} names {path_name}, which the archive does not hold")
        check_tensor_meta(entry.get("tensor_meta"), f"{where} {fqn}")
        used.add(folder + path_name)
    return used


def check_argument(arg, where: str) -> None:
    """One argument of a node: a tensor by name, a scalar, or a subgraph (checked the same way)."""
    if not isinstance(arg, dict) or len(arg) != 1:
        _refuse(f"{where}: an argument must have exactly one kind")
    (kind, value), = arg.items()
    if kind in SCALAR_ARGUMENTS:
        if kind == "as_string" and not isinstance(value, str):
            _refuse(f"{where}: as_string holds {type(value).__name__}")
        return
    if kind == "as_tensor":
        _name(_keys(value, {"name"}, where).get("name"), f"{where}: tensor")
    elif kind == "as_tensors":
        for item in _list(value, f"{where}: as_tensors"):
            check_argument({"as_tensor": item}, where)
    elif kind == "as_optional_tensor":
        check_argument(value, where)
    elif kind == "as_optional_tensors":
        for item in _list(value, f"{where}: as_optional_tensors"):
            check_argument(item, where)
    elif kind == "as_device":
        _keys(value, {"type", "index"}, f"{where}: device")
    elif kind == "as_graph":
        _name(_keys(value, {"name", "graph"}, where).get("name"), f"{where}: subgraph")
        check_graph_json(value.get("graph"), f"{where} > {value['name']}")
    else:
        _refuse(f"{where}: argument kind {kind!r} is not allowed (symbolic values, custom objects and "
                "operator references are refused)")


def check_graph_json(graph, where: str) -> None:
    """A serialized graph: ATen (or allowed wrapper) targets, plain names, static tensor metadata; the
    metadata of each node (stack traces, module paths) is dropped."""
    _keys(graph, GRAPH_KEYS, where)
    for field in ("sym_int_values", "sym_bool_values", "sym_float_values", "custom_obj_values"):
        _empty(graph.get(field), f"{where} {field}")
    values = graph.get("tensor_values")
    if not isinstance(values, dict):
        _refuse(f"{where} tensor_values is not an object")
    for name, meta in values.items():
        _name(name, f"{where}: tensor value")
        check_tensor_meta(meta, f"{where} tensor {name}")
    for arg in [*_list(graph.get("inputs"), f"{where} inputs"), *_list(graph.get("outputs"), f"{where} outputs")]:
        check_argument(arg, f"{where} input/output")
    for node in _list(graph.get("nodes"), f"{where} nodes"):
        _keys(node, NODE_KEYS, f"{where} node")
        target = node.get("target")
        if not isinstance(target, str) or not (ATEN_TARGET.match(target) or target in HOP_TARGETS):
            _refuse(f"{where}: op {target!r} is not allowed in a submitted model (only ATen ops are)")
        for item in _list(node.get("inputs"), f"{where} {target} inputs"):
            _keys(item, {"name", "arg", "kind"}, f"{where} {target}")
            if item.get("name") != "":  # a wrapper's operands are positional, unnamed
                _name(item.get("name"), f"{where} {target}: argument")
            check_argument(item.get("arg"), f"{where} {target}")
        for arg in _list(node.get("outputs"), f"{where} {target} outputs"):
            check_argument(arg, f"{where} {target} output")
        if "name" in node:
            _name(node["name"], f"{where} {target}: node")
        node["metadata"] = {}


def check_signature(signature, where: str) -> None:
    """Inputs are the user's tokens, parameters, buffers and constants; the only outputs are user outputs
    (a buffer or input mutation, a gradient or an effect token is state: refused as `graph`)."""
    _keys(signature, {"input_specs", "output_specs"}, where)
    for field, allowed in (("input_specs", INPUT_SPECS), ("output_specs", OUTPUT_SPECS)):
        for spec in _list(signature.get(field), f"{where} {field}"):
            kind = next(iter(spec), "?") if isinstance(spec, dict) and len(spec) == 1 else "?"
            if kind not in allowed:
                raise EvalError("graph", f"the program has a {kind!r} input or output: a scored model must be "
                                "stateless (its only outputs are logits; nothing it holds changes)")
            body = _keys(spec[kind], allowed[kind], f"{where} {kind}")
            if kind in ("user_input", "user_output"):
                check_argument(body.get("arg"), f"{where} {kind}")
            else:
                _name(_keys(body.get("arg"), {"name"}, f"{where} {kind}").get("name"), f"{where} {kind}")
            for name_field in allowed[kind] - {"arg", "persistent"}:
                _name(body.get(name_field), f"{where} {kind} {name_field}", FQN)


def check_module_call_graph(entries, where: str) -> None:
    for entry in _list(entries, where):
        _keys(entry, {"fqn", "signature"}, where)
        if entry.get("fqn"):
            _name(entry["fqn"], f"{where} fqn", FQN)
        if (sig := entry.get("signature")) is None:
            continue
        _keys(sig, {"inputs", "outputs", "in_spec", "out_spec", "forward_arg_names"}, f"{where} signature")
        for arg in [*_list(sig.get("inputs"), f"{where} inputs"), *_list(sig.get("outputs"), f"{where} outputs")]:
            check_argument(arg, f"{where} signature")
        for name in _list(sig.get("forward_arg_names", []), f"{where} forward_arg_names"):
            _name(name, f"{where} forward argument")
        if not isinstance(sig.get("in_spec"), str) or not isinstance(sig.get("out_spec"), str):
            _refuse(f"{where}: in_spec and out_spec must be strings")


def check_model_json(model) -> dict:
    """The program's JSON, checked; returned with node metadata dropped."""
    _keys(model, MODEL_KEYS, MODEL_JSON)
    _empty(model.get("range_constraints"), "range_constraints")
    _empty(model.get("guards_code"), "guards_code")
    module = _keys(model.get("graph_module"), {"graph", "signature", "module_call_graph", "metadata",
                                               "treespec_namedtuple_fields"}, "graph_module")
    _empty(module.get("metadata"), "graph_module metadata")
    _empty(module.get("treespec_namedtuple_fields"), "treespec_namedtuple_fields")
    check_graph_json(module.get("graph"), "graph")
    check_signature(module.get("signature"), "signature")
    check_module_call_graph(module.get("module_call_graph"), "module_call_graph")
    return model


def clean_archive(files: dict[str, bytes]) -> bytes:
    """A new archive built from the checked parts of `files`: the graph JSON (re-serialized), the two
    payload configs and the raw tensor files; empty sample inputs (torch then reads no pickle at all)."""
    if files[pt2.ARCHIVE_FORMAT_PATH] != pt2.ARCHIVE_FORMAT_VALUE.encode() or \
            files[pt2.ARCHIVE_VERSION_PATH] != pt2.ARCHIVE_VERSION_VALUE.encode():
        _refuse("the archive is not a pt2 archive of the version this torch writes")
    if files.get("byteorder", sys.byteorder.encode()) != sys.byteorder.encode():
        _refuse("the archive's tensors are not in this machine's byte order")
    model = check_model_json(_json(files, MODEL_JSON))
    configs = {name: _json(files, name) for name in PAYLOADS}
    used = set()
    for name, (folder, prefix) in PAYLOADS.items():
        used |= check_payloads(configs[name], folder, prefix, files, name)
    if unused := {n for n in files if _payload_name(n)} - used:
        _refuse(f"unexpected file(s) {sorted(unused)[:5]} that no config names")
    buffer = io.BytesIO()
    with pt2_archive.PT2ArchiveWriter(buffer) as writer:
        writer.write_string(MODEL_JSON, json.dumps(model))
        for name, config in configs.items():
            writer.write_string(name, json.dumps(config))
        for name in sorted(used):
            writer.write_bytes(name, files[name])
        writer.write_bytes(SAMPLE_INPUTS, b"")
    return buffer.getvalue()


def load_archive(path: Path) -> bytes:
    """The program at `path` as a checked archive that holds data only (see the module docstring)."""
    return clean_archive(read_archive(path))


# ---------------------------------------------------------------------------
# The program: allowed ops, no state

def check_graph(program) -> list[str]:
    """Names of the ops in the program, after refusing any op outside the allowlist and any random op
    (a scored model is a deterministic function of its input)."""
    seen = set()
    modules = [program.graph_module]
    while modules:
        gm = modules.pop()
        for node in gm.graph.nodes:
            if node.op == "get_attr":
                attr = getattr(gm, node.target, None)
                if isinstance(attr, torch.fx.GraphModule):
                    modules.append(attr)
            if node.op != "call_function":
                continue
            target = node.target
            if target is operator.getitem:
                continue
            if isinstance(target, torch._ops.HigherOrderOperator) and target.name() in ALLOWED_HIGHER_ORDER:
                seen.add(target.name())
                continue
            namespace = getattr(target, "namespace", None)
            if not isinstance(target, torch._ops.OpOverload) or namespace not in ALLOWED_NAMESPACES:
                raise EvalError("graph", f"op {target} is not allowed in a submitted model (only ATen ops are)")
            if _draws_random(node):
                raise EvalError("graph", f"op {target} draws random numbers: a scored model must be deterministic")
            seen.add(str(target))
    return sorted(seen)


def _arguments(node: torch.fx.Node) -> dict:
    """The node's arguments by schema name, defaults filled in."""
    schema = node.target._schema
    values = {a.name: a.default_value for a in schema.arguments if a.has_default_value()}
    values |= {a.name: v for a, v in zip(schema.arguments, node.args)}
    return values | dict(node.kwargs)


def _draws_random(node: torch.fx.Node) -> bool:
    """A seeded random op that actually draws: attention or dropout with a non-zero probability in
    training mode, rand, randn, bernoulli... (attention and dropout at p = 0 are deterministic)."""
    if torch.Tag.nondeterministic_seeded not in node.target.tags:
        return False
    args = _arguments(node)
    if args.get("train") is False:
        return False
    return next((args[p] for p in ("dropout_p", "p") if p in args), 1.0) != 0


def _nodes(value) -> list:
    if isinstance(value, torch.fx.Node):
        return [value]
    if isinstance(value, (list, tuple)):
        return [n for item in value for n in _nodes(item)]
    return []


def _check_writes(gm: torch.fx.GraphModule, where: str) -> None:
    """Refuse an op that writes (in place, out=, copy_, set_...) to a graph input or a view of one."""
    held = set()  # nodes that are, or may alias, an input: a parameter, buffer, constant or the tokens
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            held.add(node)
        if node.op != "call_function":
            continue
        target = node.target
        if isinstance(target, torch._ops.OpOverload):
            schema = target._schema
            bound = list(zip(schema.arguments, node.args))
            bound += [(a, node.kwargs[a.name]) for a in schema.arguments if a.name in node.kwargs]
            aliased = False
            for spec, value in bound:
                if spec.alias_info is None or not any(n in held for n in _nodes(value)):
                    continue
                if spec.alias_info.is_write:
                    raise EvalError("graph", f"{target} writes to {', '.join(n.name for n in _nodes(value))}{where}: "
                                    "a scored model must be stateless (nothing it holds may change)")
                aliased = True
            if aliased and any(r.alias_info is not None for r in schema.returns):
                held.add(node)
        elif any(n in held for n in _nodes(node.args)):
            held.add(node)  # getitem of an alias, a wrapper's outputs: assume they alias their operands
        for value in node.args:
            if isinstance(value, torch.fx.Node) and value.op == "get_attr":
                sub = getattr(gm, value.target, None)
                if isinstance(sub, torch.fx.GraphModule):
                    _check_writes(sub, f" (inside {value.target})")


def check_stateless(program) -> None:
    """Refuse a program that changes anything it holds during forward: a buffer or input mutation in its
    signature, any output but its logits, an input that is not a tensor, or an in-place write to state."""
    sig = program.graph_signature
    kinds = torch.export.graph_signature
    if sig.buffers_to_mutate or sig.user_inputs_to_mutate:
        names = [*sig.buffers_to_mutate.values(), *sig.user_inputs_to_mutate.values()]
        raise EvalError("graph", f"the program mutates {', '.join(map(str, names))} in forward: a scored model "
                        "must be stateless (a call may not change what the next call computes)")
    outputs = {spec.kind for spec in sig.output_specs} - {kinds.OutputKind.USER_OUTPUT}
    inputs = {spec.kind for spec in sig.input_specs} - {kinds.InputKind.USER_INPUT, kinds.InputKind.PARAMETER,
                                                        kinds.InputKind.BUFFER, kinds.InputKind.CONSTANT_TENSOR}
    if outputs or inputs:
        raise EvalError("graph", f"the program has {', '.join(k.name for k in outputs | inputs)} inputs or "
                        "outputs: a scored model takes tokens and returns logits, and holds no state")
    _check_writes(program.graph_module, "")


def load_program(archive: bytes, device: str):
    """A fresh module from the checked archive, after the op and state checks; and its op names."""
    try:
        program = torch.export.load(io.BytesIO(archive))
    except Exception as e:  # noqa: BLE001 - any failure to load is the candidate's
        raise EvalError("export", f"could not load the exported model: {type(e).__name__}: {e}") from None
    ops = check_graph(program)
    check_stateless(program)
    return program.module().to(device), ops


# ---------------------------------------------------------------------------
# Scoring

def log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) at every position, from logits already cut to the real vocabulary: (B, T)."""
    flat = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
    return -flat.view(targets.shape)


def nats_and_bytes(logits: torch.Tensor, targets: torch.Tensor, token_bytes: torch.Tensor) -> tuple[float, int]:
    """Sum of cross-entropy (nats) over targets that are text, and the UTF-8 bytes of those targets."""
    logits = logits[..., :token_bytes.numel()].float()
    nats = -log_probs(logits, targets)
    nbytes = token_bytes[targets]
    return float((nats * (nbytes > 0)).sum()), int(nbytes.sum())


def bits_per_byte(total_nats: float, total_bytes: int) -> float:
    return total_nats / (math.log(2) * total_bytes)


def _forward(module, x: torch.Tensor, autocast: bool) -> torch.Tensor:
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        out = module(x.clone())  # the program never sees (or could change) the harness's own rows
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise EvalError("shape", f"the model returned {type(out).__name__}, not a tensor of logits")
    return out


def vocab_logits(module, x: torch.Tensor, vocab: int, autocast: bool) -> torch.Tensor:
    """The model's logits over the real vocabulary, fp32: columns beyond it are dropped first."""
    logits = _forward(module, x, autocast)
    B, T = x.shape
    if logits.dim() != 3 or tuple(logits.shape[:2]) != (B, T) or logits.size(-1) < vocab:
        raise EvalError("shape", f"logits of shape {tuple(logits.shape)}; expected ({B}, {T}, >= {vocab})")
    return logits[..., :vocab].float()


def eval_rows(data_dir: Path, bos_id: int, B: int, T: int, split: str, metric_version: int,
              steps: int) -> list[np.ndarray]:
    """The `steps` scored batches of `split`, each (B, T + 1) int64."""
    batches = []
    for rows in eval_batches(data_dir, bos_id, B, T + 1, split, metric_version):
        batches.append(rows)
        if len(batches) == steps:
            return batches
    raise EvalError("data", f"the {split} split holds {len(batches)} batches; the profile needs {steps}")


# ---------------------------------------------------------------------------
# The causality probe

@dataclass
class Slot:
    """One probed batch: scored batch `batch`, row r cut after position cuts[r], its future spliced."""
    batch: int
    cuts: np.ndarray      # (B,)
    inputs: np.ndarray    # (B, T): the scored inputs up to each cut, other real text after it


def _donor(batches: list[np.ndarray], rng, own: tuple[int, int], cut: int, tries: int = 8) -> np.ndarray:
    """Another scored row, whose token after `cut` differs from this row's where one such is found."""
    B = batches[0].shape[0]
    x = batches[own[0]][own[1], :-1]
    for _ in range(tries):
        pick = divmod(rng.randrange(len(batches) * B), B)
        row = batches[pick[0]][pick[1], :-1]
        if pick != own and row[cut + 1] != x[cut + 1]:
            return row
    return row


def plan_probe(batches: list[np.ndarray], rng) -> list[Slot]:
    """ceil((T-1)/B) scored batches, drawn at random; every position 0..T-2 is the cut of some row (a
    random permutation, topped up with random cuts), and after each cut the row continues with another
    scored row's tokens at the same positions: real text, so probe inputs look like scored ones."""
    B, T = batches[0].shape[0], batches[0].shape[1] - 1
    count = math.ceil((T - 1) / B)
    positions = list(range(T - 1)) + [rng.randrange(T - 1) for _ in range(count * B - (T - 1))]
    rng.shuffle(positions)
    order = rng.sample(range(len(batches)), len(batches))
    slots = []
    for j in range(count):
        b = order[j % len(order)]
        cuts = np.array(positions[j * B:(j + 1) * B])
        inputs = batches[b][:, :-1].copy()
        for r, c in enumerate(cuts):
            inputs[r, c + 1:] = _donor(batches, rng, (b, r), c)[c + 1:]
        slots.append(Slot(b, cuts, inputs))
    return slots


@dataclass
class RowStats:
    target: torch.Tensor  # (B, T) log p(scored target) at every position
    at_cut: torch.Tensor  # (B, V) the whole log-distribution at each row's cut


def row_stats(logits: torch.Tensor, target_lp: torch.Tensor, cuts: np.ndarray) -> RowStats:
    """What the probe compares, from a batch's logits and its targets' log-probabilities."""
    rows = torch.arange(len(cuts), device=logits.device)
    at_cut = F.log_softmax(logits[rows, torch.from_numpy(cuts).to(logits.device)], dim=-1)
    return RowStats(target_lp.cpu(), at_cut.cpu())


def _change(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b|, 0 where they are equal (equal infinities included), inf where either is NaN."""
    diff = torch.where(a == b, torch.zeros_like(a), (a - b).abs())
    return diff.nan_to_num(nan=math.inf)


def causal_leak(slot: Slot, scored: RowStats, probed: RowStats) -> tuple[float, int, int]:
    """Largest change (nats) at positions <= cut, and its row and position."""
    T = scored.target.size(1)
    before = torch.arange(T)[None, :] <= torch.from_numpy(slot.cuts)[:, None]
    target = torch.where(before, _change(scored.target, probed.target), torch.zeros(()))
    cut = _change(scored.at_cut, probed.at_cut).amax(dim=-1)
    worst_target, worst_cut = target.max(), cut.max()
    if worst_cut > worst_target:
        row = int(cut.argmax())
        return float(worst_cut), row, int(slot.cuts[row])
    row, position = divmod(int(target.argmax()), T)
    return float(worst_target), row, position


# ---------------------------------------------------------------------------
# The two phases, each on a freshly loaded program

def score_phase(module, batches, slots, token_bytes, vocab, device, autocast) -> dict:
    total_nats, total_bytes, reference = 0.0, 0, {}
    for i, rows in enumerate(batches):
        rows = torch.from_numpy(rows).to(device)
        x, y = rows[:, :-1], rows[:, 1:]
        logits = vocab_logits(module, x, vocab, autocast)
        lp = log_probs(logits, y)
        nbytes = token_bytes[y]
        nats = float((-lp * (nbytes > 0)).sum())
        if not math.isfinite(nats):
            raise EvalError("nonfinite", "the model produced non-finite logits on validation data")
        total_nats += nats
        total_bytes += int(nbytes.sum())
        for j, slot in enumerate(slots):
            if slot.batch == i:
                reference[j] = row_stats(logits, lp, slot.cuts)
    return {"nats": total_nats, "bytes": total_bytes, "reference": reference}


def probe_phase(module, batches, slots, vocab, device, autocast) -> dict:
    probed = {}
    for j, slot in enumerate(slots):
        x = torch.from_numpy(slot.inputs).to(device)
        y = torch.from_numpy(batches[slot.batch][:, 1:]).to(device)
        logits = vocab_logits(module, x, vocab, autocast)
        probed[j] = row_stats(logits, log_probs(logits, y), slot.cuts)
    return {"probed": probed}


def evaluate_program(program_path: Path, settings: Settings, split: str = "val", device: str | None = None) -> dict:
    t0 = time.time()
    profile = settings.profile
    data_dir, manifest = require_prepared(profile)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    autocast = device == "cuda"
    archive = load_archive(Path(program_path))
    tok = Tokenizer.from_directory(data_dir)
    vocab = tok.get_vocab_size()
    token_bytes = torch.from_numpy(load_token_bytes(data_dir).astype(np.int64)).to(device)
    B, T = profile.eval_batch_size, profile.max_seq_len
    steps = max(1, profile.eval_tokens // (B * T))
    batches = eval_rows(data_dir, tok.bos_token_id, B, T, split, settings.metric_version, steps)
    rng = secrets.SystemRandom()
    slots = plan_probe(batches, rng)

    phases = {
        "score": lambda module: score_phase(module, batches, slots, token_bytes, vocab, device, autocast),
        "probe": lambda module: probe_phase(module, batches, slots, vocab, device, autocast),
    }
    order = rng.sample(sorted(phases), len(phases))  # unpredictable, and each on a fresh program
    results, seconds = {}, {}
    for name in order:
        start = time.time()
        module, ops = load_program(archive, device)
        results.update(phases[name](module))
        seconds[name] = time.time() - start
        del module

    tolerance = CAUSAL_TOLERANCE["cuda" if autocast else "cpu"]
    leak, where = 0.0, None
    for j, slot in enumerate(slots):
        change, row, position = causal_leak(slot, results["reference"][j], results["probed"][j])
        if change > leak:
            leak, where = change, (row, position)
    if leak > tolerance:
        raise EvalError("causality", f"the log-probability at position {where[1]} (row {where[0]}) changed by "
                        f"{leak:.3g} nats (tolerance {tolerance:g}) when only later tokens changed: the model "
                        "looks at the future")
    return {
        "val_bpb" if split == "val" else f"{split}_bpb": bits_per_byte(results["nats"], results["bytes"]),
        "split": split,
        "eval_tokens": steps * B * T,
        "eval_bytes": results["bytes"],
        "eval_seconds": round(seconds["score"], 3),
        "probe_seconds": round(seconds["probe"], 3),
        "total_seconds": round(time.time() - t0, 3),
        "causality_leak": leak,
        "causality_tolerance": tolerance,
        "probe_rows": len(slots) * B,
        "phase_order": order,
        "ops": len(ops),
        "device": device,
        "data_fingerprint": manifest["data_fingerprint"],
    }


# ---------------------------------------------------------------------------
# Command line

def write_result(out: Path, result: dict) -> None:
    """Write the JSON next to `out` and move it into place; never through a link left in the folder."""
    tmp = out.with_name(out.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(result, indent=2))
    os.replace(tmp, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--program", required=True, type=Path)
    parser.add_argument("--workspace", required=True, type=Path)
    parser.add_argument("--split", default="val")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--expect-fingerprint", default=None,
                        help="refuse to score unless the imported harness hashes to this (run_evaluator passes it)")
    parser.add_argument("--then-test", default=None, type=Path,
                        help="after a successful --split val, score the test split too and write it here (the "
                             "parent reads the val result as soon as it is written, and stops this process "
                             "unless the model is kept)")
    args = parser.parse_args(argv)
    code = _score(args, args.split, args.out)
    if code == 0 and args.then_test is not None and args.split == "val":
        code = _score(args, "test", args.then_test)
    return code


def _score(args, split: str, out: Path) -> int:
    """One split, its result written to `out` (an error result on failure); the exit code."""
    try:
        if args.expect_fingerprint is not None:
            verify_harness(args.expect_fingerprint)
        result = evaluate_program(args.program, Settings.load(args.workspace), split, args.device)
        result["harness_verified"] = args.expect_fingerprint is not None
        code = 0
    except EvalError as e:
        result, code = {"error_class": e.kind, "error": str(e)}, 1
    except Exception as e:  # noqa: BLE001 - reported, never a silent pass
        result, code = {"error_class": "eval", "error": f"{type(e).__name__}: {e}"}, 1
    write_result(out, result)
    if code:
        print(f"evaluation failed ({result['error_class']}): {result['error']}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
