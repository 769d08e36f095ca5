"""`make eval-real`: the whole pipeline on a real instruct model, as a user runs it, and a
report of what it reaches on held-out prompts. An evaluation, not a test: about an hour on
2 cores.

    python scripts/eval_real/run.py [--prompts DIR] [--model FILE.gguf] [--out DIR]

DIR holds six JSONL prompt files ({"id", "prompt", "category"}): tune_{harmful,sensitive,
benign}.jsonl (fit and tune) and heldout_{harmful,sensitive,benign}.jsonl (measured once,
never used to fit or tune); the default is the project's own sets (scripts/eval_real/
prompts/, frozen before the first tuning run). Every stage is a `steerbake` command run in a
subprocess, so the numbers are what a user gets. The report (OUT/report.json and
OUT/report.md) gives refusal before/after per held-out set with 95% Wilson intervals, benign
KL, sample answers, wall time per stage, the judge behind every number and the sha256 of
every prompt file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from bake.stats import wilson

HERE = Path(__file__).resolve().parent
KINDS = ("harmful", "sensitive", "benign")
FILES = [f"{split}_{kind}.jsonl" for split in ("tune", "heldout") for kind in KINDS]
DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf"
MAX_NEW_TOKENS = 48  # answers judged per prompt: greedy, this long (tune/evaluate default)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Runner:
    """Runs steerbake commands, timing each stage and logging the command lines."""

    def __init__(self, out: Path, threads: int) -> None:
        self.out, self.threads = out, threads
        self.stages: list[dict[str, object]] = []
        self.exe = str(Path(sys.executable).parent / "steerbake")

    def __call__(self, stage: str, *args: str) -> str:
        cmd = [self.exe, *args]
        env = {**os.environ, "STEERBAKE_THREADS": str(self.threads)}
        print(f"[{stage}] {shlex.join(cmd)}", flush=True)
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - start
        (self.out / "logs").mkdir(exist_ok=True)
        (self.out / "logs" / f"{len(self.stages):02d}-{stage}.log").write_text(
            f"$ {shlex.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
        )
        self.stages.append({"stage": stage, "seconds": round(seconds, 1), "command": cmd[1:]})
        if proc.returncode != 0:
            raise SystemExit(
                f"eval-real: {stage} failed ({proc.returncode}):\n{proc.stderr[-2000:]}"
            )
        print(f"[{stage}] {seconds:.0f} s", flush=True)
        return proc.stdout


def combined(prompts: Path, work: Path) -> Path:
    """The three tuning sets in one file: the prompts the vectors are fitted on."""
    lines = []
    for kind in KINDS:
        lines += (prompts / f"tune_{kind}.jsonl").read_text(encoding="utf-8").splitlines()
    path = work / "fit_prompts.jsonl"
    path.write_text("\n".join(line for line in lines if line.strip()) + "\n")
    return path


def pipeline(run: Runner, model: Path, prompts: Path, out: Path, goal: str) -> dict[str, object]:
    folder = out / "model"
    run("convert", "convert", str(model), "-o", str(folder), "--overwrite")
    fit_prompts = combined(prompts, out)
    answers, scores = out / "answers.jsonl", out / "scores.jsonl"
    answers.unlink(missing_ok=True)
    run("generate", "generate", str(folder), str(fit_prompts), "-o", str(answers), "-k", "1",
        "--greedy", "--max-new-tokens", str(MAX_NEW_TOKENS), "--dtype", "float32")  # fmt: skip
    run("judge", "judge", str(answers), "-o", str(scores), "--backend", "pattern")
    run("collect", "collect", str(folder), str(fit_prompts), "-o", str(out / "acts"),
        "--overwrite")  # fmt: skip
    run("fit", "fit", str(out / "acts"), str(scores), "-o", str(out / "vectors.safetensors"),
        "--min-set-size", "5")  # fmt: skip
    tune_sets = [f"--{kind}" for kind in KINDS]
    tune_args = [arg for kind, flag in zip(KINDS, tune_sets, strict=True)
                 for arg in (flag, str(prompts / f"tune_{kind}.jsonl"))]  # fmt: skip
    run("tune", "tune", str(folder), str(out / "vectors.safetensors"), *tune_args, "-o",
        str(out / "plan.json"), "--goal", goal)  # fmt: skip
    held = [arg for kind in KINDS for arg in ("--prompts", str(prompts / f"heldout_{kind}.jsonl"))]
    run("evaluate", "evaluate", str(folder), "--plan", str(out / "plan.json"), *held,
        "--report", str(out / "evaluation.json"),
        "--answers", str(out / "answers_heldout.jsonl"))  # fmt: skip
    return json.loads((out / "evaluation.json").read_text())


def report(evaluation: dict, run: Runner, model: Path, prompts: Path, out: Path) -> dict:
    plan = json.loads((out / "plan.json").read_text())
    sets = {}
    for name, s in evaluation["sets"].items():
        row = {}
        for when in ("before", "after"):
            n, rate = s[when]["n"], s[when]["refusal_rate"]
            k = round(rate * n)
            row[when] = {"refused": k, "n": n, "rate": rate, "ci95": wilson(k, n)}
        row["samples"] = s["samples"]
        sets[name] = row
    return {
        "model": str(model),
        "model_sha256": sha256(model),
        "prompt_sets": {f: sha256(prompts / f) for f in FILES},
        "judge": evaluation["judge"],
        "decoding": f"{evaluation['decoding']}, {evaluation['max_new_tokens']} new tokens",
        "plan": {"layers": plan["layers"], "alpha": plan["alpha"]},
        "tuning": plan.get("provenance", {}).get("tuning", {}).get("chosen"),
        "sets": sets,
        "kl": evaluation["kl"],
        "stages": run.stages,
        "total_seconds": round(sum(float(s["seconds"]) for s in run.stages), 1),  # type: ignore[arg-type]
    }


def markdown(r: dict) -> str:
    def pct(x: float) -> str:
        return f"{100 * x:.0f}%"

    lines = [
        "# eval-real report",
        "",
        f"Model `{Path(r['model']).name}` (sha256 {r['model_sha256'][:12]}); judge "
        f"`{r['judge']}`; decoding {r['decoding']}; plan: layers {r['plan']['layers']}, "
        f"alpha {r['plan']['alpha']}.",
        "",
        "| held-out set | n | refusal before [95% CI] | refusal after [95% CI] |",
        "|---|---|---|---|",
    ]
    for name, s in r["sets"].items():
        b, a = s["before"], s["after"]
        lines.append(
            f"| {name} | {b['n']} | {pct(b['rate'])} [{pct(b['ci95'][0])}, {pct(b['ci95'][1])}] "
            f"| {pct(a['rate'])} [{pct(a['ci95'][0])}, {pct(a['ci95'][1])}] |"
        )
    lines += ["", *(f"KL(base || steered) on {k}: {v:.4f}" for k, v in r["kl"].items()), ""]
    lines += ["## Wall time per stage", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {s['stage']} | {s['seconds']} |" for s in r["stages"]]
    lines += ["", f"Total: {r['total_seconds']} s", "", "## Sample answers", ""]
    for name, s in r["sets"].items():
        for x in s["samples"]:
            lines += [f"- **{name}**: {x['prompt']}", f"  - before: {x['before']!r}",
                      f"  - after: {x['after']!r}"]  # fmt: skip
    lines += ["", "## Prompt sets (sha256)", ""]
    lines += [f"- `{f}`: {h}" for f, h in r["prompt_sets"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    models = Path(os.environ.get("STEERBAKE_MODELS", "~/.cache/steerbake/models")).expanduser()
    ap.add_argument("--prompts", type=Path, default=HERE / "prompts")
    ap.add_argument("--model", type=Path, default=models / DEFAULT_MODEL)
    ap.add_argument("--out", type=Path, default=Path("eval-real-out"))
    ap.add_argument("--threads", type=int, default=int(os.environ.get("STEERBAKE_THREADS", "2")))
    ap.add_argument("--goal", default="selective", help="tune's --goal (remove or selective)")
    args = ap.parse_args()
    missing = [f for f in FILES if not (args.prompts / f).is_file()]
    if missing:
        raise SystemExit(f"eval-real: {args.prompts} lacks {', '.join(missing)}")
    if not args.model.is_file():
        raise SystemExit(f"eval-real: {args.model} is missing: run make models")
    args.out.mkdir(parents=True, exist_ok=True)
    run = Runner(args.out, args.threads)
    evaluation = pipeline(run, args.model, args.prompts, args.out, args.goal)
    r = report(evaluation, run, args.model, args.prompts, args.out)
    (args.out / "report.json").write_text(json.dumps(r, indent=2) + "\n")
    (args.out / "report.md").write_text(markdown(r))
    print(markdown(r))


if __name__ == "__main__":
    main()
