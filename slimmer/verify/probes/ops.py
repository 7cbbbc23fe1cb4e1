"""Run one operation of a library on a small input and compare it with plain torch: `ops.py LIBRARY`.

LIBRARY is torch, torch_scatter, torch_sparse, torch_cluster, torch_spline_conv or pyg_lib. Runs on
CUDA when torch sees a GPU, else on the CPU, and reports which device ran it. Importing
torch_geometric proves nothing here: it swallows import errors of these libraries, so each one
is imported and called directly.
"""

# Runs on the checked environment's own Python (3.8 and later), so: no annotations, %-formatting.
# ruff: noqa: ANN001, ANN201, UP031

from __future__ import annotations

import json
import sys
import time
import traceback
import warnings


def report(target, ok, seconds, error="", detail=""):
    line = {"target": target, "ok": ok, "seconds": round(seconds, 3), "error": error, "detail": detail}
    sys.stdout.write("\n@@slimmer " + json.dumps(line) + "\n")
    sys.stdout.flush()


def describe(exc):
    first = (str(exc).strip().splitlines() or [""])[0]
    return "%s: %s" % (type(exc).__name__, first) if first else type(exc).__name__


def close(torch, got, want, what):
    got = got.detach().to("cpu", torch.float64)
    want = want.detach().to("cpu", torch.float64)
    if got.shape != want.shape:
        raise AssertionError("%s: shape %s, expected %s" % (what, tuple(got.shape), tuple(want.shape)))
    if not torch.allclose(got, want, rtol=1e-4, atol=1e-5):
        raise AssertionError("%s: differs from plain torch by %.3g" % (what, (got - want).abs().max().item()))


def check_torch(torch, dev):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(8, 5, generator=g).to(dev)
    b = torch.randn(5, 3, generator=g).to(dev)
    close(torch, a @ b, (a[:, :, None] * b[None, :, :]).sum(1), "matmul")
    idx = torch.tensor([0, 2, 2, 1, 0, 3, 3, 3], device=dev)
    want = torch.stack([a[idx == i].sum(0) for i in range(4)])
    close(torch, torch.zeros(4, 5, device=dev).index_add_(0, idx, a), want, "index_add_")
    conv = torch.nn.functional.conv1d(a[:, :3].t()[None], b[:3].t()[:, :, None])
    close(torch, conv[0].t(), a[:, :3] @ b[:3], "conv1d")


def check_torch_scatter(torch, dev):
    import torch_scatter

    g = torch.Generator().manual_seed(0)
    src = torch.randn(10, 4, generator=g).to(dev)
    index = torch.tensor([0, 1, 0, 1, 2, 2, 3, 3, 3, 0], device=dev)
    ref_sum = torch.zeros(4, 4, device=dev).index_add_(0, index, src)
    close(torch, torch_scatter.scatter(src, index, dim=0, reduce="sum"), ref_sum, "scatter sum")
    ref_max = torch.full((4, 4), float("-inf"), device=dev).scatter_reduce(
        0, index[:, None].expand_as(src), src, reduce="amax", include_self=True
    )
    close(torch, torch_scatter.scatter_max(src, index, dim=0)[0], ref_max, "scatter_max")
    order = torch.argsort(index, stable=True)
    ptr = torch.tensor([0, 3, 5, 7, 10], device=dev)
    close(torch, torch_scatter.segment_csr(src[order], ptr, reduce="sum"), ref_sum, "segment_csr")


def check_torch_sparse(torch, dev):
    from torch_sparse import SparseTensor

    g = torch.Generator().manual_seed(0)
    row = torch.tensor([0, 0, 1, 2, 3, 3], device=dev)
    col = torch.tensor([1, 3, 2, 0, 1, 3], device=dev)
    value = torch.randn(6, generator=g).to(dev)
    x = torch.randn(4, 3, generator=g).to(dev)
    dense = torch.zeros(4, 4, device=dev)
    dense[row, col] = value
    adj = SparseTensor(row=row, col=col, value=value, sparse_sizes=(4, 4))
    close(torch, adj.matmul(x), dense @ x, "SparseTensor.matmul")
    close(torch, adj.to_dense(), dense, "SparseTensor.to_dense")


def check_torch_cluster(torch, dev):
    import torch_cluster

    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 3, generator=g).to(dev)
    k = 3
    edge = torch_cluster.knn_graph(x, k=k, loop=False)
    dist = torch.cdist(x, x)
    dist.fill_diagonal_(float("inf"))
    nearest = dist.topk(k, largest=False).indices
    want = {(int(j), i) for i in range(12) for j in nearest[i]}
    got = set(zip(edge[0].tolist(), edge[1].tolist()))
    if got != want and {(b, a) for a, b in got} != want:
        raise AssertionError("knn_graph: %d of %d edges differ from plain torch" % (len(got ^ want), len(want)))


def check_torch_spline_conv(torch, dev):
    from torch_spline_conv import spline_basis, spline_weighting

    g = torch.Generator().manual_seed(0)
    kernel_size = 5
    pseudo = (torch.rand(6, 1, generator=g) * 0.98).to(dev)
    basis, wi = spline_basis(
        pseudo, torch.tensor([kernel_size], device=dev), torch.tensor([1], dtype=torch.uint8, device=dev), 1
    )
    v = pseudo[:, 0] * (kernel_size - 1)
    low = v.floor()
    frac = v - low
    close(torch, basis, torch.stack([1 - frac, frac], dim=1), "spline_basis")
    want_wi = torch.stack([low.long() % kernel_size, (low.long() + 1) % kernel_size], dim=1)
    if not torch.equal(wi.cpu(), want_wi.cpu()):
        raise AssertionError("spline_basis: weight indices differ from plain torch")
    x = torch.randn(6, 2, generator=g).to(dev)
    weight = torch.randn(kernel_size, 2, 3, generator=g).to(dev)
    want = sum(basis[:, s, None] * torch.bmm(x[:, None, :], weight[wi[:, s]])[:, 0] for s in range(2))
    close(torch, spline_weighting(x, weight, basis, wi), want, "spline_weighting")


def check_pyg_lib(torch, dev):
    import pyg_lib

    g = torch.Generator().manual_seed(0)
    inputs = torch.randn(7, 4, generator=g).to(dev)
    ptr = torch.tensor([0, 3, 7], device=dev)
    other = torch.randn(2, 4, 5, generator=g).to(dev)
    want = torch.cat([inputs[:3] @ other[0], inputs[3:] @ other[1]])
    close(torch, pyg_lib.ops.segment_matmul(inputs, ptr, other), want, "segment_matmul")


CHECKS = {
    "torch": check_torch,
    "torch_scatter": check_torch_scatter,
    "torch_sparse": check_torch_sparse,
    "torch_cluster": check_torch_cluster,
    "torch_spline_conv": check_torch_spline_conv,
    "pyg_lib": check_pyg_lib,
}


def main(names):
    warnings.simplefilter("ignore")
    for name in names:
        start = time.monotonic()
        device = "cpu"
        try:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
            CHECKS[name](torch, torch.device(device))
            if device == "cuda":
                torch.cuda.synchronize()
        except BaseException as exc:
            detail = "device %s\n%s" % (device, traceback.format_exc()[-4000:])
            report(name, False, time.monotonic() - start, describe(exc), detail)
        else:
            report(name, True, time.monotonic() - start, detail="device %s" % device)


if __name__ == "__main__":
    main(sys.argv[1:])
