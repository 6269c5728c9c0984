"""Every command shown in README.md, in docs/*.md and in every ``--help`` epilog runs, so a documented command cannot
break.

The commands are read from the documents themselves (``bash`` blocks and inline ``tokenweight …`` spans,
the ``examples:`` of each command's ``--help``): a newly documented command is picked up without editing this file.
Each runs in a fresh working folder through ``tokenweight.cli.main`` with the tiny world substituted:

- hub ids and local model paths -> the small KeyFact base model (reward models: a tiny classifier built from it);
  datasets -> a folder with ``train.jsonl`` / ``test.jsonl`` of KeyFact rows; recipes -> a copy with those
  substitutions; the built-in task (also as the data and reference of ``eval`` on a given model) ->
  ``keyfact_model_size small`` and a few pairs;
- sizes -> tiny (``--max_steps 1``, ``--max_length 64``, a few pairs, one seed, one scheme, ``--quick``), and
  hardware settings -> CPU (``--bf16 false``, ``--model_dtype float32``);
- placeholders: ``DIR`` a fresh folder, ``M`` the model, ``S`` otpo, ``N`` 2, ``F`` 0.25, ``SEED`` 0, and the shell
  variables of docs/DISTRIBUTED.md and docs/SCALING.md: ``$R`` a recipe, ``$CONFIGS`` the accelerate configs,
  ``$NAME`` a run name, ``$RANK``/``$MASTER_IP``/``$MASTER_PORT`` (an unknown one fails the test);
- a command that reads what another writes first gets it written: ``train --ref_log_probs DIR`` runs
  ``precompute reference --output DIR`` with the same flags before it; commands joined by ``&&`` (a pipeline such
  as the TIS-DPO recipe) run in order in one working folder, each reading what the ones before wrote.

``accelerate launch`` lines are parsed only (the recipe read, the flags parsed into a config, the accelerate config
file found): they need several processes, which ``tests/test_distributed.py`` covers. ``make`` targets and Python
snippets are not commands of the ``tokenweight`` program and are not run here.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from tokenweight.cli import COMMANDS, main
from tokenweight.recipe import parse_train_config

REPO = Path(__file__).resolve().parents[1]
PLACEHOLDERS = {"DIR": lambda env, cwd: str(cwd / "dir"), "M": lambda env, cwd: env["model"],
                "S": lambda env, cwd: "otpo", "N": lambda env, cwd: "2", "F": lambda env, cwd: "0.25",
                "SEED": lambda env, cwd: "0"}
#: Shell variables of the documents (``$NAME`` words), replaced before anything else.
SHELL_VARIABLES = {"R": "recipes/otpo_llama3_8b_instruct_ultrafeedback.yaml", "CONFIGS": "src/tokenweight/accelerate_configs",
                   "NAME": "run", "RANK": "0", "MASTER_IP": "127.0.0.1", "MASTER_PORT": "29500"}
#: Config keys / flags replaced wherever a command or recipe sets them (value -> tiny-world value).
REPLACED = {"model_name_or_path": "model", "ref_model_name_or_path": "model", "dataset_name": "data",
            "reward_model": "reward_model"}
FIXED = {"bf16": "false", "fp16": "false", "model_dtype": "float32", "optim": "adamw_torch",
         "attn_implementation": "sdpa", "max_length": "64", "max_prompt_length": "32",
         "gradient_accumulation_steps": "1", "dataset_split": "train",
         "eval_split": "test", "num_pairs": "4", "num_generations": "2", "max_new_tokens": "8", "seeds": "1",
         "schemes": "uniform", "variants": "base", "train_size": "8", "eval_size": "4", "attention_batch_size": "2"}
#: Flags naming files or folders: an absolute path (a documented benchmark's own folders) is moved into the test's
#: folder, so that running the documented command never writes where the measured run lives.
PATH_FLAGS = {"output_dir", "report_from", "compare", "facts", "docs", "claims_docs", "output"}
#: Flags every run of a command gets (set when absent): a tiny budget.
BUDGET = {"train": {"max_steps": "1", "use_cpu": "true", "report_to": "none", "per_device_eval_batch_size": "4"},
          "eval": {"num_pairs": "4", "num_generations": "2", "max_new_tokens": "8"},
          "weights": {"num_pairs": "2"},
          "bench": {"quick": None, "schemes": "uniform", "seeds": "1", "train_size": "8", "eval_size": "4",
                    "variants": "base"}}
BUILT_IN = {"keyfact_model_size": "small", "keyfact_train_size": "16", "keyfact_eval_size": "4"}


def shell_commands(text: str) -> list[str]:
    """The ``tokenweight`` / ``accelerate launch`` lines of a shell text: continuations joined, ``# comments`` and
    ``  (remarks)`` dropped."""
    commands = []
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():
        line = re.split(r"\s+#|\s{2,}\(", line.strip())[0].strip()
        if line == "tokenweight" or line.startswith(("tokenweight ", "accelerate launch ")):
            commands.append(line)
    return commands


DOCUMENTS = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]


def document_commands(name: str) -> list[str]:
    """The commands of one document: its ``bash`` blocks, then its inline ``tokenweight …`` spans."""
    text = (REPO / name).read_text(encoding="utf-8")
    commands = [c for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL) for c in shell_commands(block)]
    return commands + re.findall(r"`(tokenweight(?: [^`]+)?)`", text)


def help_text(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main(argv)
    return out.getvalue()


def epilog_commands() -> list[tuple[str, str]]:
    """``(source, command)`` of the examples in ``tokenweight --help`` and in every command's ``--help``."""
    found = []
    for command in [None, *COMMANDS]:
        argv = [command, "--help"] if command else ["--help"]
        text = help_text(argv)
        assert "examples:" in text, f"`tokenweight {' '.join(argv)}` shows no examples"
        found += [(f"{' '.join(argv)}", c) for c in shell_commands(text.split("examples:", 1)[1])]
    return found


def documented_commands() -> list[tuple[str, str]]:
    seen, unique = set(), []
    documented = [(name, c) for name in DOCUMENTS for c in document_commands(name)]
    for source, command in [*documented, *epilog_commands()]:
        if command not in seen:
            seen.add(command)
            unique.append((source, command))
    return unique


def _params():
    params = []
    for source, command in documented_commands():
        params.append(pytest.param(command, id=f"{source}: {command[:90]}"))
    return params


def set_flag(argv: list[str], flag: str, value: str | None) -> list[str]:
    """``argv`` with ``--flag value`` (or a bare ``--flag`` when ``value`` is None) replacing any given one."""
    if f"--{flag}" in argv:
        index = argv.index(f"--{flag}")
        if value is not None:
            argv[index + 1] = value
        return argv
    return argv + ([f"--{flag}"] if value is None else [f"--{flag}", value])


def tiny_recipe(path: str, env: dict, cwd: Path) -> str:
    """A copy of the recipe at ``path`` (relative paths from the repository root) in the tiny world."""
    source = Path(path) if Path(path).is_absolute() else REPO / path
    values = yaml.safe_load(source.read_text())
    for key in values:
        if key in REPLACED:
            values[key] = env[REPLACED[key]]
        elif key in FIXED:
            values[key] = yaml.safe_load(FIXED[key])
    if values.get("attention_weights"):
        values["attention_weights"] = str(cwd / "attention-weights")
    copy = cwd / f"tiny-{source.name}"
    copy.write_text(yaml.safe_dump(values))
    return str(copy)


def substitute(words: list[str], env: dict, cwd: Path) -> list[str]:
    """A documented ``tokenweight`` argv (without the program name) in the tiny world."""
    argv = []
    for index, word in enumerate(words):
        flag = words[index - 1][2:] if index and words[index - 1].startswith("--") else None
        if word in PLACEHOLDERS:
            word = PLACEHOLDERS[word](env, cwd)
        elif re.fullmatch(r"[A-Z]{1,5}", word):
            pytest.fail(f"unknown placeholder {word!r} in a documented command: add it to PLACEHOLDERS")
        elif flag in REPLACED:
            word = env[REPLACED[flag]]
        elif flag in FIXED:
            word = FIXED[flag]
        elif flag == "config":
            word = tiny_recipe(word, env, cwd)
        elif flag in PATH_FLAGS and Path(word).is_absolute():  # a folder of the run that measured it: not touched
            word = str(cwd / Path(word).name)
        argv.append(word)
    command = argv[0] if argv else None
    for flag, value in BUDGET.get(command, {}).items():
        argv = set_flag(argv, flag, value)
    keyfact_task = "--dataset_name" not in argv and "--config" not in argv
    if keyfact_task and "--model_name_or_path" not in argv and command in ("train", "precompute"):
        for flag, value in BUILT_IN.items():
            argv = set_flag(argv, flag, value)
    elif keyfact_task and command in ("eval", "weights"):  # eval of a given model: the KeyFact reference, small
        argv = set_flag(argv, "config", env["built_in_recipe"])
    if "--facts" in argv:  # a user's facts file: the built-in facts, copied where the command expects it
        shutil.copy(REPO / "src/tokenweight/keyfact/facts.json", cwd / argv[argv.index("--facts") + 1])
    return argv


def expected_output(argv: list[str]) -> Path | None:
    """The file or folder the command promises to write (``None``: nothing to check, e.g. ``--help``)."""
    if not argv or "--help" in argv or "--help-all" in argv:
        return None
    value = {flag: argv[i + 1] for i, flag in enumerate(argv[:-1]) if flag.startswith("--")}
    command = argv[0]
    if command == "train":
        return Path(parse_train_config(argv[1:]).output_dir, "results.json")
    return {"precompute": lambda: Path(value["--output"]),
            "eval": lambda: Path(value.get("--output", Path(value["--model_name_or_path"], "eval.json"))),
            "weights": lambda: Path(value.get("--output", "weights.html")),
            "bench": lambda: Path(value.get("--report_from", value.get("--output_dir", "outputs/bench-keyfact")),
                                  "report.md")}[command]()


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """The tiny world: the small KeyFact model, a tiny classifier built from it, a data folder, a KeyFact recipe."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from tokenweight.keyfact import build_keyfact, keyfact_base_model
    from tokenweight.models import load_tokenizer

    root = tmp_path_factory.mktemp("documented")
    model = str(root / "model")  # a copy: `tokenweight eval` writes eval.json next to the model it evaluates
    shutil.copytree(keyfact_base_model(size="small"), model)
    tokenizer = load_tokenizer(model)
    reward = root / "reward-model"
    config = AutoConfig.from_pretrained(model, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(reward)
    tokenizer.save_pretrained(reward)
    data = root / "data"
    data.mkdir()
    splits = build_keyfact(n_train=16, n_eval=8, seed=0)
    for name, split in (("train", splits["train"]), ("test", splits["eval"])):
        (data / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in split))
    built_in_recipe = root / "keyfact-small.yaml"
    built_in_recipe.write_text(yaml.safe_dump({"keyfact_model_size": "small", "keyfact_eval_size": 4}))
    return {"model": model, "reward_model": str(reward), "data": str(data), "built_in_recipe": str(built_in_recipe)}


def test_the_documents_show_commands_of_every_kind():
    commands = [c for _, c in documented_commands()]
    for program in ("tokenweight train", "tokenweight eval", "tokenweight weights", "tokenweight precompute",
                    "tokenweight bench keyfact", "accelerate launch"):
        assert any(c.startswith(program) for c in commands), program
    assert len(commands) >= 20


@pytest.mark.parametrize("command", _params())
def test_documented_command_runs(command, env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for step in command.split(" && "):  # a pipeline (the TIS-DPO recipe): each step reads what the one before wrote
        run_documented(step, env, tmp_path)


def expand_variables(word: str) -> str:
    """``word`` with its ``$NAME`` shell variables replaced (:data:`SHELL_VARIABLES`; an unknown one fails)."""
    for name in re.findall(r"\$(\w+)", word):
        if name not in SHELL_VARIABLES:
            pytest.fail(f"unknown shell variable ${name} in a documented command: add it to SHELL_VARIABLES")
    return re.sub(r"\$(\w+)", lambda match: SHELL_VARIABLES[match.group(1)], word)


def run_documented(command: str, env: dict, tmp_path: Path) -> None:
    """Run one documented ``tokenweight`` command (or parse an ``accelerate launch`` line) in the tiny world."""
    words = [expand_variables(word) for word in shlex.split(command)]
    if words[0] == "accelerate":
        if "--config_file" in words:
            config_file = words[words.index("--config_file") + 1]
            assert (REPO / config_file).is_file(), config_file
        argv = substitute(words[words.index("tokenweight.cli") + 1:], env, tmp_path)
        assert argv[0] in ("train", "precompute")
        config = parse_train_config(argv[2 + argv.index("--output"):] if argv[0] == "precompute" else argv[1:])
        assert config.model_name_or_path == env["model"] or (config.model_name_or_path, config.dataset_name) == (
            None, None)  # a named model runs in the tiny world; none named: the built-in task
        return
    argv = substitute(words[1:], env, tmp_path)
    if argv[:1] == ["eval"]:
        Path(env["model"], "eval.json").unlink(missing_ok=True)  # each documented eval writes its own
    if argv[:1] == ["train"] and "--ref_log_probs" in argv:
        cache = argv[argv.index("--ref_log_probs") + 1]
        flags = [w for i, w in enumerate(argv[1:]) if w != "--ref_log_probs" and argv[i] != "--ref_log_probs"]
        assert main(["precompute", "reference", "--output", cache, *flags]) == 0
    try:
        status = main(argv)
    except SystemExit as exit_info:  # argparse's --help of a sub-command
        status = exit_info.code
    assert status == 0, f"`tokenweight {' '.join(argv)}` exited with {status}"
    output = expected_output(argv)
    if output is not None:
        assert output.exists(), f"`tokenweight {' '.join(argv)}` did not write {output}"
