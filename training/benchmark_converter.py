"""Speed and memory of the PNG converter (`processing.png_dataset`), run as `python -m training.benchmark_converter`.

```
python -m processing.synthetic --output_dir coco5k --train 5000 --val 0 --image_style coco
python -m training.benchmark_converter --root coco5k --splits train2017 --num_proc 1 2 [--json converter.json]
```

Each `--num_proc` value runs the converter CLI once, in a fresh interpreter under `/usr/bin/time -v` (when
installed), and reports: narratives/s (from the converter's own clock, and from the wall clock of the whole command
including the interpreter start), MB/s written (bytes of the output folder over the converter's time), the peak
RSS of every process of the run (sampled from `/proc/<pid>/status` VmHWM, the kernel's own high-water mark, for the
main process and each worker) and GNU time's maximum RSS. It then extrapolates to the real PNG train split (133,103
narratives): hours at the measured rate per process times N processes, and the size on disk at the measured bytes
per narrative. The load average before and after each run is printed: on a shared machine the other processes'
load, not the converter, may decide a speed-up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil

REAL_TRAIN_NARRATIVES = 133_103
"""Narratives of the PNG train2017 split (over COCO train2017's ~118k images)."""
EXTRAPOLATION_PROCESSES = (1, 2, 8, 16)
_SUMMARY = re.compile(r"Wrote (\d+) narratives to .* in ([\d.]+) s")
_GNU_TIME_RSS = re.compile(r"Maximum resident set size \(kbytes\): (\d+)")
_GNU_TIME_CPU = re.compile(r"(?:User|System) time \(seconds\): ([\d.]+)")


def cpu_name() -> str:
    name = "unknown CPU"
    with contextlib.suppress(OSError, AttributeError), open("/proc/cpuinfo") as cpuinfo:
        name = re.search(r"model name\s*:\s*(.*)", cpuinfo.read()).group(1)
    return f"{name} ({os.cpu_count()} cores)"


def _high_water_marks(process: psutil.Process, peaks: dict[int, int]) -> None:
    """Record VmHWM (peak RSS, bytes) of `process` and its descendants into `peaks` (pid -> bytes)."""
    with contextlib.suppress(psutil.Error):
        for member in [process, *process.children(recursive=True)]:
            with contextlib.suppress(OSError, psutil.Error):
                status = Path(f"/proc/{member.pid}/status").read_text()
                match = re.search(r"VmHWM:\s*(\d+) kB", status)
                if match and member.name() != "time":
                    peaks[member.pid] = max(peaks.get(member.pid, 0), int(match.group(1)) * 1024)


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def run_converter(root: str, splits: list[str], num_proc: int, output: Path, extra: list[str]) -> dict:
    """One converter run in a fresh interpreter; its speed, output size and per-process peak RSS."""
    command = [sys.executable, "-m", "processing.png_dataset", "--root", root, "--output_dir", str(output)]
    command += ["--splits", *splits, "--num_proc", str(num_proc), *extra]
    gnu_time = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)
    if gnu_time:
        command = [gnu_time, "-v", *command]
    load_before = os.getloadavg()
    # Files, not pipes: a pipe nobody reads until the end fills up with progress bars and blocks the converter.
    with tempfile.TemporaryFile("w+") as stdout_file, tempfile.TemporaryFile("w+") as stderr_file:
        started = time.perf_counter()
        process = psutil.Popen(command, stdout=stdout_file, stderr=stderr_file, text=True)
        peaks: dict[int, int] = {}
        while process.poll() is None:
            _high_water_marks(process, peaks)
            time.sleep(0.25)
        wall = time.perf_counter() - started
        stdout_file.seek(0)
        stderr_file.seek(0)
        stdout, stderr = stdout_file.read(), stderr_file.read()
    if process.returncode != 0:
        raise RuntimeError(f"converter failed ({process.returncode}):\n{stderr[-3000:]}")
    match = _SUMMARY.search(stdout)
    narratives, seconds = int(match.group(1)), float(match.group(2))
    written = folder_bytes(output)
    gnu_rss = _GNU_TIME_RSS.search(stderr)
    cpu_seconds = sum(float(value) for value in _GNU_TIME_CPU.findall(stderr)) or None
    return {
        "num_proc": num_proc,
        "narratives": narratives,
        "converter_seconds": seconds,
        "wall_seconds": wall,
        "narratives_per_s": narratives / seconds,
        "narratives_per_s_wall": narratives / wall,
        "bytes_written": written,
        "mb_per_s_written": written / seconds / 1e6,
        "bytes_per_narrative": written / narratives,
        "peak_rss_mb_per_process": sorted((peak / 2**20 for peak in peaks.values()), reverse=True),
        "gnu_time_max_rss_mb": int(gnu_rss.group(1)) / 1024 if gnu_rss else None,
        # user + system time of the converter and its workers: what a run costs, whatever else loads the machine
        "cpu_ms_per_narrative": 1000 * cpu_seconds / narratives if cpu_seconds else None,
        "load_average_before": [round(load, 2) for load in load_before],
        "load_average_after": [round(load, 2) for load in os.getloadavg()],
    }


def extrapolate(run: dict) -> list[dict]:
    """Hours and disk size for the real train split, at `run`'s rate per process scaled to N processes."""
    per_process = run["narratives_per_s"] / run["num_proc"]
    cpu_seconds = REAL_TRAIN_NARRATIVES * (run["cpu_ms_per_narrative"] or float("nan")) / 1000
    return [
        {
            "num_proc": num_proc,
            "hours": REAL_TRAIN_NARRATIVES / (per_process * num_proc) / 3600,
            # N processes on N cores of their own, at the run's CPU time per narrative (disk permitting)
            "hours_dedicated_cores": cpu_seconds / num_proc / 3600,
            "disk_gb": REAL_TRAIN_NARRATIVES * run["bytes_per_narrative"] / 1e9,
        }
        for num_proc in EXTRAPOLATION_PROCESSES
    ]


def format_report(report: dict) -> str:
    lines = [f"PNG converter on {report['cpu']} | source {report['root']} ({report['source_mb']:.0f} MB)", ""]
    lines.append(
        "| processes | narratives | narratives/s | narratives/s (wall) | MB/s written | peak RSS per process (MB) "
        "| GNU time max RSS (MB) | CPU ms per narrative | load before → after |"
    )
    lines.append("|---:|---:|---:|---:|---:|---|---:|---:|---|")
    for run in report["runs"]:
        peaks = ", ".join(f"{peak:.0f}" for peak in run["peak_rss_mb_per_process"])
        gnu = f"{run['gnu_time_max_rss_mb']:.0f}" if run["gnu_time_max_rss_mb"] else "–"
        cpu = f"{run['cpu_ms_per_narrative']:.1f}" if run["cpu_ms_per_narrative"] else "–"
        lines.append(
            f"| {run['num_proc']} | {run['narratives']} | {run['narratives_per_s']:.1f} | "
            f"{run['narratives_per_s_wall']:.1f} | {run['mb_per_s_written']:.1f} | {peaks} | {gnu} | {cpu} | "
            f"{run['load_average_before'][0]:.1f} → {run['load_average_after'][0]:.1f} |"
        )
    if len(report["runs"]) > 1:
        base = report["runs"][0]
        for run in report["runs"][1:]:
            speedup = run["narratives_per_s"] / base["narratives_per_s"]
            lines.append(f"\nspeed-up of {run['num_proc']} processes over {base['num_proc']}: {speedup:.2f}x")
    basis = report["extrapolation_basis"]
    lines += ["", f"Real train split ({REAL_TRAIN_NARRATIVES} narratives) at the rate per process of the "]
    lines[-1] += f"{basis['num_proc']}-process run ({basis['bytes_per_narrative'] / 1e3:.0f} KB per narrative):"
    lines += [
        "| processes | hours at this run's rate | hours on dedicated cores (CPU time) | disk (GB) |",
        "|---:|---:|---:|---:|",
    ]
    for row in report["extrapolation"]:
        lines.append(
            f"| {row['num_proc']} | {row['hours']:.2f} | {row['hours_dedicated_cores']:.2f} | {row['disk_gb']:.1f} |"
        )
    return "\n".join(lines)


def run(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="Speed and peak memory of the PNG converter.")
    parser.add_argument("--root", required=True, help="benchmark root (e.g. from processing.synthetic)")
    parser.add_argument("--splits", nargs="+", default=["train2017"])
    parser.add_argument("--num_proc", type=int, nargs="+", default=[1, 2], help="process counts to measure")
    parser.add_argument("--output_dir", default=None, help="where the outputs go (default: a temporary folder)")
    parser.add_argument("--keep_outputs", action="store_true", help="keep the converted folders")
    parser.add_argument("--json", default=None, help="also write the report as JSON")
    args, extra = parser.parse_known_args(argv)
    base = Path(args.output_dir or tempfile.mkdtemp(prefix="epng-converter-benchmark-"))
    runs = []
    try:
        for num_proc in args.num_proc:
            output = base / f"converted-num_proc-{num_proc}"
            shutil.rmtree(output, ignore_errors=True)
            runs.append(run_converter(args.root, args.splits, num_proc, output, extra))
            if not args.keep_outputs:
                shutil.rmtree(output, ignore_errors=True)
    finally:
        if args.output_dir is None and not args.keep_outputs:
            shutil.rmtree(base, ignore_errors=True)
    # The run with the most processes: its rate per process includes the cost of running in parallel.
    basis = max(runs, key=lambda run: run["num_proc"])
    report = {
        "cpu": cpu_name(),
        "root": args.root,
        "source_mb": folder_bytes(Path(args.root)) / 1e6,
        "splits": args.splits,
        "runs": runs,
        "extrapolation_basis": basis,
        "extrapolation": extrapolate(basis),
    }
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


def main(argv=None) -> None:
    """Console entry point: `run` without its result (a console script exits with what it returns; a dict is 1)."""
    run(argv)


if __name__ == "__main__":
    main()
