"""Compile Triton kernels for an sm_90 (H100/H200) target without a GPU: Triton ships ptxas.

The CPU interpreter does not type-check like the compiler does, so the kernel tests also compile every kernel and
inspect its PTX. That runs in a subprocess (`run_script`): the test process has TRITON_INTERPRET=1, where the
kernels are interpreter objects. The script imports `compile_sm90` from this file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def compile_sm90(fn, consts: dict, num_warps: int = 4, data: set[str] | None = None, aligned: bool = False) -> str:
    """PTX of `fn` compiled for sm_90. Upper-case arguments are pointers (fp16 for names in `data`, else fp32),
    except the sizes C, HW, K, L (i32); `slope`/`eps` are fp32. `aligned`: pointers and C/HW divisible by 16, as
    Triton specialises them at launch for aligned tensors."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    data = data or {"X", "Y", "DY", "DX"}
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name in ("slope", "eps"):
            sig[name] = "fp32"
        elif name.isupper() and name not in ("C", "HW", "K", "L"):
            sig[name] = "*fp16" if name in data else "*fp32"
        else:
            sig[name] = "i32"
    attrs = {}
    if aligned:
        attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(fn.arg_names) if sig[a].startswith("*")}
        attrs |= {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in ("C", "HW") if a in sig}
    kernel = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
                            target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps))  # fmt: skip
    assert kernel.asm["cubin"], fn.__name__
    ptx = kernel.asm["ptx"]
    assert "ld.local" not in ptx, fn.__name__ + " spills registers to local memory"
    return ptx


def run_script(script: str) -> str:
    """Run `script` in a fresh interpreter without TRITON_INTERPRET; its stdout (skips if ptxas is missing)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "ptxas" in proc.stderr and "not found" in proc.stderr.lower():
        pytest.skip("triton's bundled ptxas is not available")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout
