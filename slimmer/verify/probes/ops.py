"""Run one operation of a library on a small input and compare it with plain torch: `ops.py LIBRARY`.

LIBRARY is torch, torch_scatter, torch_sparse, torch_cluster, torch_spline_conv, pyg_lib or
torch_geometric. Runs on CUDA when torch sees a GPU, else on the CPU, and reports which device ran it.
Importing torch_geometric proves nothing by itself: it swallows import errors of these libraries and
falls back to plain torch, so each library is imported and called directly, and the torch_geometric
workload fails when a compiled library that is installed did not load.
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


# torch_geometric's flag for each compiled library it picks up when the library loads.
PYG_FLAGS = {
    "torch_scatter": "WITH_TORCH_SCATTER",
    "torch_sparse": "WITH_TORCH_SPARSE",
    "torch_cluster": "WITH_TORCH_CLUSTER",
    "torch_spline_conv": "WITH_TORCH_SPLINE_CONV",
    "pyg_lib": "WITH_PYG_LIB",
}


def random_graph(torch, g, nodes, edges, dev):
    """Distinct directed edges without self-loops, as (source, target)."""
    pairs = torch.randint(0, nodes, (2, edges * 2), generator=g)
    pairs = pairs[:, pairs[0] != pairs[1]]
    pairs = torch.unique(pairs[0] * nodes + pairs[1])[:edges]
    return torch.stack([pairs // nodes, pairs % nodes]).to(dev)


def gcn_reference(torch, x, src, dst, weight, bias):
    """GCNConv by its formula: D^-1/2 (A + I) D^-1/2 X W^T + b, A[target, source] = 1."""
    n = x.shape[0]
    adj = torch.zeros(n, n, device=x.device, dtype=x.dtype)
    adj[dst, src] = 1.0
    adj = adj + torch.eye(n, device=x.device, dtype=x.dtype)
    norm = adj.sum(1).pow(-0.5)
    return (norm[:, None] * adj * norm[None, :]) @ (x @ weight.t()) + bias


def sage_reference(torch, x, src, dst, lin_l, lin_r):
    """SAGEConv (mean): lin_l(mean of the sources of each target) + lin_r(x)."""
    n = x.shape[0]
    total = torch.zeros(n, x.shape[1], device=x.device, dtype=x.dtype).index_add_(0, dst, x[src])
    count = torch.zeros(n, device=x.device, dtype=x.dtype).index_add_(0, dst, torch.ones_like(dst, dtype=x.dtype))
    mean = total / count.clamp(min=1)[:, None]
    return mean @ lin_l.weight.t() + lin_l.bias + x @ lin_r.weight.t()


def forward_backward(torch, conv, run, reference, x, what):
    """The layer's output and the gradients of its parameters and input against the formula's."""
    params = [p for p in conv.parameters() if p.requires_grad]
    got = run(x)
    want = reference(x)
    close(torch, got, want, what + " forward")
    got_grads = torch.autograd.grad(got.pow(2).sum(), [x, *params])
    want_grads = torch.autograd.grad(want.pow(2).sum(), [x, *params])
    for i, (a, b) in enumerate(zip(got_grads, want_grads)):
        close(torch, a, b, "%s backward (%s)" % (what, "input" if i == 0 else "parameter %d" % i))


def check_torch_geometric(torch, dev):
    import importlib.util

    import torch_geometric.typing as pyg_typing
    from torch_geometric.nn import GCNConv, SAGEConv

    used = []
    for lib, flag in sorted(PYG_FLAGS.items()):
        # A flag this torch_geometric does not define: it does not use the library (2.8 ignores
        # torch_cluster and torch_spline_conv); their own op checks cover them.
        if importlib.util.find_spec(lib) is None or not hasattr(pyg_typing, flag):
            continue
        if not getattr(pyg_typing, flag):
            raise AssertionError("%s is installed but torch_geometric could not load it (%s is False)" % (lib, flag))
        used.append(lib)
    g = torch.Generator().manual_seed(0)
    nodes = 24
    edge_index = random_graph(torch, g, nodes, 80, dev)
    src, dst = edge_index[0], edge_index[1]
    x = torch.randn(nodes, 6, generator=g).to(dev).requires_grad_()
    torch.manual_seed(0)
    gcn = GCNConv(6, 4).to(dev)
    sage = SAGEConv(6, 4).to(dev)
    layouts = [("edge_index", edge_index)]
    if "torch_sparse" in used:
        from torch_sparse import SparseTensor

        # The transposed adjacency (row = target): GCNConv and SAGEConv then run torch_sparse's kernels.
        layouts.append(("SparseTensor", SparseTensor(row=dst, col=src, sparse_sizes=(nodes, nodes))))
    for layout, graph in layouts:
        forward_backward(
            torch,
            gcn,
            lambda x, graph=graph: gcn(x, graph),
            lambda x: gcn_reference(torch, x, src, dst, gcn.lin.weight, gcn.bias),
            x,
            "GCNConv on %s" % layout,
        )
        forward_backward(
            torch,
            sage,
            lambda x, graph=graph: sage(x, graph),
            lambda x: sage_reference(torch, x, src, dst, sage.lin_l, sage.lin_r),
            x,
            "SAGEConv on %s" % layout,
        )
    return "layouts %s; compiled libraries used: %s" % (
        ", ".join(name for name, _ in layouts),
        ", ".join(used) or "none",
    )


CHECKS = {
    "torch": check_torch,
    "torch_scatter": check_torch_scatter,
    "torch_sparse": check_torch_sparse,
    "torch_cluster": check_torch_cluster,
    "torch_spline_conv": check_torch_spline_conv,
    "pyg_lib": check_pyg_lib,
    "torch_geometric": check_torch_geometric,
}


def main(names):
    warnings.simplefilter("ignore")
    for name in names:
        start = time.monotonic()
        device = "cpu"
        try:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
            said = CHECKS[name](torch, torch.device(device))
            if device == "cuda":
                torch.cuda.synchronize()
        except BaseException as exc:
            detail = "device %s\n%s" % (device, traceback.format_exc()[-4000:])
            report(name, False, time.monotonic() - start, describe(exc), detail)
        else:
            detail = "device %s" % device + ("\n%s" % said if said else "")
            report(name, True, time.monotonic() - start, detail=detail)


if __name__ == "__main__":
    main(sys.argv[1:])
