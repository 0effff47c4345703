"""Sampling the candidate where it can read and write nothing of the gate's.

The candidate generator is untrusted code (an MLflow pyfunc, unpickled with cloudpickle). It never runs
in the validating process: :func:`sample_in_sandbox` starts :mod:`gate.sampling_child` in a separate
process that gets

- a read-only copy of the version's artifacts (the very files whose digest the attestation names),
  its plan and, for a conditional generator, its label maps, and nothing else of the gate's: with
  bubblewrap, a file-system view of the system and the Python installation only (no working
  directory, no ``.gate/``, no keys, no reports), its own PID, network, IPC and user namespaces, an
  empty ``/tmp``, no capabilities; an environment built from scratch (no ``GATE_*`` secret);
- CPU, address-space (on a GPU: data-segment) and file-size limits (``setrlimit``) and a wall-clock limit
  enforced here;
- one way to answer: raw ``.npy`` records on a pipe, read here under a byte budget, never unpickled.

A GPU (``spec.candidate.device``, opt-in): the generator may sample on one NVIDIA GPU. The sandbox then
shows that GPU's device file and the driver's control files (no other GPU's file), and ``/sys`` read-only as
a Docker container sees it (the CUDA driver reads the PCI topology there; it lists the machine's devices,
other GPUs included). The memory limit becomes ``RLIMIT_DATA`` instead of ``RLIMIT_AS``: CUDA reserves far
more address space than any limit would allow, without using it, and ``RLIMIT_DATA`` does not count shared
mappings or pinned memory, so on a GPU the generator's host memory is bounded less tightly (a cgroup's
``memory.max`` would bound it).

Isolation levels (recorded in every report): ``bubblewrap`` (namespaces as above) or ``process`` (a
separate process with a clean environment, limits and an empty working directory, but the machine's
file system in view). A validation is signed only at ``bubblewrap``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable

import numpy as np

from gate.errors import InputError, LimitExceeded, SandboxError

BUBBLEWRAP = "bubblewrap"
PROCESS = "process"
#: system folders a Python interpreter needs; bound read-only when they exist (symlinks are recreated)
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
#: the few files of /etc that the C library and Python read; never the whole of /etc
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/passwd",
                "/etc/group", "/etc/nsswitch.conf", "/etc/alternatives")
STDERR_TAIL = 16_384  # bytes of the child's stderr kept for the error message
#: the NVIDIA driver's own files, shown beside a GPU's file when the sampler may use it
NVIDIA_CONTROL_FILES = ("/dev/nvidiactl", "/dev/nvidia-uvm")  # not -uvm-tools: a profiler's, not CUDA's


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 600.0
    max_memory_mb: int = 4096  # address space (RLIMIT_AS; on a GPU RLIMIT_DATA): Python + MLflow reserve ~0.5 GB
    max_output_mb: int = 2048  # bytes of arrays the generator may send back, all batches together
    threads: int = 1


@dataclasses.dataclass(frozen=True)
class SamplingPlan:
    mode: str  # unconditional | paired | conditional
    n: int
    seed: int
    batch_size: int
    device: str = "cpu"  # what the generator is told to sample on: cpu or cuda (the sandbox's SamplerDevice)

    @property
    def batches(self) -> int:
        return -(-self.n // self.batch_size)

    def spans(self):
        """(batch index, first sample, samples in it) of every batch, in order."""
        for b, start in enumerate(range(0, self.n, self.batch_size)):
            yield b, start, min(self.batch_size, self.n - start)


@dataclasses.dataclass(frozen=True)
class SamplerDevice:
    """Where the candidate samples: ``device`` is what the generator is told (``cpu`` or ``cuda``), ``files``
    the device files the sandbox shows it (none on the CPU)."""

    device: str = "cpu"
    files: tuple[str, ...] = ()
    #: whether the generator is told (its version declares the ``device`` parameter; older ones do not)
    told: bool = True

    def describe(self) -> str:
        """What the report records."""
        if self.device == "cpu" or self.told:
            return self.device
        return f"{self.device} (shown, not told: the version declares no device parameter)"


def nvidia_files(index: int, dev: Path = Path("/dev")) -> tuple[str, ...]:
    """GPU ``index``'s device file (``/dev/nvidiaN``: the driver's minor number, nvidia-smi's "Minor Number")
    and the driver's control files, or nothing unless all of them exist: without ``nvidia-uvm`` CUDA
    cannot run in the sandbox."""
    files = (dev / f"nvidia{index}", *(dev / Path(f).name for f in NVIDIA_CONTROL_FILES))
    return tuple(str(f) for f in files) if all(f.is_char_device() for f in files) else ()


def resolve_sampler_device(requested: str, dev: Path = Path("/dev"),
                           cuda_usable: Callable[[], bool] | None = None) -> SamplerDevice:
    """``spec.candidate.device`` as the sandbox applies it. ``auto`` is GPU 0 when there is one and this
    Python's torch can use it, else the CPU; ``cuda``/``cuda:N`` that is not there (or that torch cannot
    use) is bad configuration (exit 2), found before anything runs, never a silent fall-back."""
    import re

    from gate.errors import ConfigError
    from gate.policy import DEVICE_PATTERN

    if not re.fullmatch(DEVICE_PATTERN, requested):
        raise ConfigError(f"spec.candidate.device: {requested[:40]!r} is not auto, cpu, cuda or cuda:N")
    if requested == "cpu":
        return SamplerDevice()
    index = int(requested.split(":")[1]) if ":" in requested else 0
    # the generator samples with gate's own Python: a GPU its torch cannot drive is no GPU. Asked first:
    # the driver creates /dev/nvidia-uvm on a machine's first CUDA use
    usable = (dev / f"nvidia{index}").is_char_device() and (cuda_usable or _torch_sees_cuda)()
    files = nvidia_files(index, dev) if usable else ()
    if files:
        return SamplerDevice("cuda", files)
    if requested == "auto":
        return SamplerDevice()
    raise ConfigError(f"spec.candidate.device: {requested} asked for, but this machine has no usable "
                      f"{dev / f'nvidia{index}'} (with {', '.join(NVIDIA_CONTROL_FILES)}, and a torch that sees "
                      "CUDA); use auto to fall back to the CPU")


def _torch_sees_cuda() -> bool:
    """Only asked when an NVIDIA device file exists: the core does not need torch, and never imports it
    on a machine without a GPU."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def bubblewrap_path() -> str | None:
    return shutil.which("bwrap")


def probe_isolation() -> str:
    """``bubblewrap`` when bwrap runs here with the namespaces gate asks for, else ``process``."""
    bwrap = bubblewrap_path()
    if bwrap is None:
        return PROCESS
    try:
        with tempfile.TemporaryDirectory(prefix="gate-probe-") as empty:
            cmd = _bwrap_args(bwrap, [(Path(empty), "/gate/probe")]) + ["/bin/sh", "-c", "true"]
            done = subprocess.run(cmd, capture_output=True, timeout=30, env={})
    except (OSError, subprocess.TimeoutExpired):
        return PROCESS
    return BUBBLEWRAP if done.returncode == 0 else PROCESS


def gate_code_dirs() -> list[Path]:
    """gate's own packages (for an editable install, folders of the checkout)."""
    import gate

    dirs = [Path(gate.__file__).parent]
    try:
        import gate_plugins

        dirs.append(Path(gate_plugins.__file__).parent)
    except ImportError:
        pass
    return [d.resolve() for d in dirs]


def python_roots() -> list[Path]:
    """What the child must see to run Python and import gate: the interpreter's prefixes and, for an
    editable install, gate's own source folders (never the folder they sit in, which holds ``.gate/``)."""
    # site folders that a .pth line adds (a venv layered on another, conda develop) hold gate's
    # dependencies too; only site folders, so that nothing else on sys.path (a test folder) is shown
    sites = [Path(p) for p in sys.path if p and Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]
    roots = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix),
             Path(os.path.realpath(sys.executable)).parent.parent, *sites, *gate_code_dirs()}
    roots = sorted({r.resolve() for r in roots if r.exists()})
    if Path("/") in roots:
        raise SandboxError(f"the Python installation ({sys.executable}) sits at the file system's root: the "
                           "sandbox would see everything; install Python under a prefix of its own")
    return roots


def _bwrap_args(bwrap: str, binds: list[tuple[Path, str]], tmp_bytes: int = 256 * 2**20,
                hidden: list[Path] = (), devices: tuple[str, ...] = ()) -> list[str]:
    """The sandbox's mounts, in order: system folders, Python, the candidate's inputs; then an empty
    tmpfs over every ``hidden`` path (the working directory, ``.gate/``, the reports, the key) that
    happens to lie inside a bound folder (``WORKDIR /usr/src/app``); then the bound folders that lie
    inside a hidden one (a virtual environment in the project, gate's own code) again on top."""
    args = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--cap-drop", "ALL",
            "--die-with-parent", "--new-session", "--clearenv", "--proc", "/proc", "--dev", "/dev",
            "--size", str(tmp_bytes), "--tmpfs", "/tmp", "--size", str(16 * 2**20), "--tmpfs", "/dev/shm"]
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    for f in SYSTEM_FILES:
        if os.path.exists(f):
            args += ["--ro-bind", f, f]
    for f in devices:  # a GPU's file and the driver's, at their /dev names (the NVIDIA driver's own layout)
        args += ["--dev-bind", f, f"/dev/{Path(f).name}"]
    if devices:
        args += ["--ro-bind", "/sys", "/sys"]
    for src, dst in binds:
        args += ["--ro-bind", str(src), dst]
    system = [Path(d) for d in SYSTEM_DIRS if os.path.isdir(d) and not os.path.islink(d)]
    bound = system + [Path(src) for src, dst in binds if str(src) == dst]  # bound at their own path
    covered = []
    for h in hidden:
        h = Path(os.path.realpath(h))
        target = h if h.is_dir() or not h.exists() else h.parent
        if any(target.is_relative_to(src) for src in bound):
            args += ["--tmpfs", str(target)]
            covered.append(target)
    for src in bound:
        if any(src != t and src.is_relative_to(t) for t in covered):
            args += ["--ro-bind", str(src), str(src)]
    # a working directory of its own, empty: /tmp may hold the mount points of folders bound under it
    return args + ["--size", str(16 * 2**20), "--tmpfs", "/gate/work", "--chdir", "/gate/work"]


def child_environment(threads: int) -> dict[str, str]:
    """Built from nothing: no variable of the gate's environment (keys, secrets, tracking URIs) reaches
    candidate code."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8",
           "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "HF_HUB_OFFLINE": "1",
           "PYTHONDONTWRITEBYTECODE": "1",
           # glibc reserves 64 MB of address space per thread arena: many cores would eat max_memory_mb
           "MALLOC_ARENA_MAX": "2"}
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[key] = str(threads)
    return env


def _limit_resources(limits: SandboxLimits, gpu: bool = False) -> Callable[[], None]:
    # CUDA maps terabytes of address space it never touches: on a GPU only the data segment is limited
    memory = resource.RLIMIT_DATA if gpu else resource.RLIMIT_AS
    wanted = {memory: int(limits.max_memory_mb) * 2**20,
              resource.RLIMIT_CPU: int(limits.timeout_s * max(1, limits.threads)) + 30,
              resource.RLIMIT_FSIZE: int(limits.max_output_mb) * 2**20, resource.RLIMIT_CORE: 0}
    # never above a hard limit this process already has (a container's ulimit): lowering is all we may do
    final = {}
    for which, value in wanted.items():
        _soft, hard = resource.getrlimit(which)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        final[which] = value

    def apply() -> None:  # runs in the child between fork and exec
        for which, value in final.items():
            resource.setrlimit(which, (value, value))

    return apply


class _RecordReader(threading.Thread):
    """Reads ``.npy`` records from the child's pipe under a byte budget. Only numeric dtypes are
    accepted, the header is parsed by numpy's literal parser, and nothing is ever unpickled."""

    def __init__(self, stream, budget: int, expected: int, on_record: Callable[[int], None],
                 on_refusal: Callable[[], None]) -> None:
        super().__init__(daemon=True)
        self.stream, self.budget, self.expected, self.on_record = stream, budget, expected, on_record
        self.on_refusal = on_refusal  # stop the child at once: it would block on the pipe until the time limit
        self.records: list[np.ndarray] = []
        self.problem: str | None = None
        self.over_budget = False

    def run(self) -> None:
        fmt = np.lib.format
        try:
            while len(self.records) < self.expected:
                head = self.stream.read(6)
                if not head:
                    return
                if head != fmt.MAGIC_PREFIX:
                    raise ValueError("not a .npy record")
                major, _minor = self.stream.read(2)
                read_header = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
                shape, fortran, dtype = read_header(self.stream, max_header_size=1024)
                if dtype.hasobject or dtype.kind not in "biuf" or len(shape) > 4 or any(d < 0 for d in shape):
                    raise ValueError(f"batch {len(self.records)}: dtype {dtype.str} and shape {shape} are not "
                                     "an image array")
                size = math.prod(shape) * dtype.itemsize  # Python integers: no overflow
                if size > self.budget:
                    self.over_budget = True
                    raise ValueError(f"batch {len(self.records)}: {size / 2**20:.0f} MB is more than the "
                                     f"{self.budget / 2**20:.0f} MB left of spec.candidate.max_output_mb")
                self.budget -= size
                data = bytearray(size)
                view, got = memoryview(data), 0
                while got < size:
                    n = self.stream.readinto(view[got:got + (1 << 22)])
                    if not n:
                        raise ValueError(f"batch {len(self.records)}: the record was cut off")
                    got += n
                arr = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
                self.records.append(arr)
                self.on_record(len(self.records))
            if self.stream.read(1):
                raise ValueError("more output than the batches asked for")
        except Exception as exc:  # noqa: BLE001 - whatever the child sent, it is refused with the reason
            self.problem = str(exc)[:300]
            self.on_refusal()


def _tail_reader(stream, keep: int) -> tuple[threading.Thread, bytearray]:
    buf = bytearray()

    def run() -> None:
        while chunk := stream.read(4096):
            buf.extend(chunk)
            del buf[:-keep]

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, buf


def sample_in_sandbox(model_dir: Path, plan: SamplingPlan, limits: SandboxLimits, isolation: str, *,
                      labels: np.ndarray | None = None, progress: Callable[[int], None] = lambda _n: None,
                      where: str = "candidate", hidden: list[Path] = (),
                      device: SamplerDevice = SamplerDevice()) -> list[np.ndarray]:
    """The generator's raw output, one array per batch (batch ``b`` drawn with seed ``plan.seed + b``),
    sampled on ``device``: the generator is shown its files and told ``device.device`` (when ``device.told``),
    whatever the plan says.
    Raises :class:`InputError` when the generator fails or answers out of contract, :class:`LimitExceeded`
    past a limit, :class:`SandboxError` when the sandbox itself cannot run."""
    with tempfile.TemporaryDirectory(prefix="gate-sampler-") as work:
        work = Path(work)
        inputs, scratch = work / "input", work / "tmp"
        inputs.mkdir()
        scratch.mkdir()
        told = dataclasses.replace(plan, device=device.device if device.told else "cpu")
        (inputs / "plan.json").write_text(json.dumps(dataclasses.asdict(told)), encoding="utf-8")
        if labels is not None:
            np.save(inputs / "labels.npy", np.ascontiguousarray(labels, dtype=np.int64), allow_pickle=False)
        child = [sys.executable, "-I", "-m", "gate.sampling_child"]
        env = child_environment(limits.threads)
        if isolation == BUBBLEWRAP:
            bwrap = bubblewrap_path()
            if bwrap is None:
                raise SandboxError("bubblewrap (bwrap) is not installed: apt-get install bubblewrap")
            binds = [(r, str(r)) for r in python_roots()] + [(inputs, "/gate/input"), (Path(model_dir), "/gate/model")]
            tmp_bytes = min(limits.max_memory_mb, 1024) * 2**20
            cmd = _bwrap_args(bwrap, binds, tmp_bytes, [Path.cwd(), *hidden], device.files) + child + \
                ["/gate/input", "/gate/model"]
            cwd = None
        else:
            cmd = child + [str(inputs), str(model_dir)]
            env["HOME"] = env["TMPDIR"] = str(scratch)
            cwd = scratch
        try:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True,
                                    preexec_fn=_limit_resources(limits, gpu=bool(device.files)))
        except (OSError, subprocess.SubprocessError) as exc:
            raise SandboxError(f"cannot start the sampler ({getattr(exc, 'strerror', None) or exc})") from None
        done = [0]

        def on_record(k: int) -> None:
            progress(min(plan.batch_size, plan.n - (k - 1) * plan.batch_size))
            done[0] = k

        def stop() -> None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

        reader = _RecordReader(proc.stdout, limits.max_output_mb * 2**20, plan.batches, on_record, stop)
        reader.start()
        err_thread, err_tail = _tail_reader(proc.stderr, STDERR_TAIL)
        timed_out = False
        try:
            proc.wait(timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_group(proc)
            reader.join(10)
            err_thread.join(10)
        stderr = err_tail.decode("utf-8", "replace")
        if timed_out:
            raise LimitExceeded(f"{where}: the generator did not finish within spec.candidate.timeout_s = "
                                f"{limits.timeout_s:g} s (after {done[0]} of {plan.batches} batches); it was killed")
        if reader.over_budget:
            raise LimitExceeded(f"{where}: {reader.problem}")
        if reader.problem:
            raise InputError(f"{where}: the sampler's answer is out of contract: {reader.problem}")
        if proc.returncode != 0:
            limited, message = _failure(proc.returncode, stderr, limits, done[0], plan)
            raise (LimitExceeded if limited else InputError)(f"{where}: {message}")
        if reader.problem or len(reader.records) != plan.batches:
            raise InputError(f"{where}: the sampler's answer is out of contract: "
                             f"{reader.problem or f'{len(reader.records)} of {plan.batches} batches'}")
        return reader.records


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _failure(code: int, stderr: str, limits: SandboxLimits, batches_done: int, plan: SamplingPlan) -> tuple[bool, str]:
    """(whether a limit stopped it, one line): the limit it hit, else the generator's own message."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    mine = [_printable(ln[len("gate-sampler: "):], 500) for ln in lines if ln.startswith("gate-sampler: ")]
    out_of_memory = "MemoryError" in stderr or "Cannot allocate memory" in stderr or "std::bad_alloc" in stderr
    killed = {sig for sig in (signal.SIGXCPU, signal.SIGKILL, signal.SIGSEGV)}
    # a signal shows as -N from a plain child, as 128+N from bubblewrap (which reports its child's death)
    if out_of_memory or -code in killed or code - 128 in killed:
        return True, (f"the generator was stopped after {batches_done} of {plan.batches} batches: it exceeded "
                      f"spec.candidate.max_memory_mb = {limits.max_memory_mb} or its CPU time (exit {code})")
    if mine:
        return False, f"generator failed on {mine[-1]}"
    last = _printable(lines[-1]) if lines else "no output"
    return False, f"the generator process failed (exit {code}): {last}"


def _printable(text: str, limit: int = 300) -> str:
    """A line of the child's stderr as safe one-line text: it is the candidate's to write."""
    return "".join(c if c.isprintable() else "?" for c in text)[:limit]
