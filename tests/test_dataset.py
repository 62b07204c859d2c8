"""dataset_bounds: the bounds of the loss over a whole data set read in batches, against the
traces of the explicit Hessian of that loss (torch.func.hessian over all samples) and its
gradient against ws_bounds on the concatenated data."""
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torch_ws
import reference


def model_and_data(n=23, d=3, h=4, classes=1, seed=0, hidden_layers=1):
    torch.manual_seed(seed)
    layers = [nn.Linear(d, h), nn.Tanh()]
    for _ in range(hidden_layers - 1):
        layers += [nn.Linear(h, h - 1), nn.Tanh()]
        h -= 1
    model = nn.Sequential(*layers, nn.Linear(h, classes)).double()
    x = torch.randn(n, d, dtype=torch.float64)
    y = (torch.randint(0, 2, (n,)).double() if classes == 1
         else torch.randint(0, classes, (n,)))
    return model, x, y


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_whole_set_bounds_equal_the_explicit_hessian_over_all_samples(reduction):
    model, x, y = model_and_data()
    loader = DataLoader(TensorDataset(x, y), batch_size=5)  # 23 = 4·5 + a partial batch of 3
    bounds = torch_ws.dataset_bounds(model, loader, reduction=reduction)
    params = [model[0].weight, model[0].bias, model[2].weight, model[2].bias]
    hessian = reference.explicit_hessian(x, y, *(p.detach() for p in params), "tanh", reduction)
    assert float(bounds.trace) == pytest.approx(float(hessian.trace()), rel=1e-12)
    assert float(bounds.trace_sq) == pytest.approx(float((hessian * hessian).sum()), rel=1e-12)
    assert float(bounds.lambda_max_upper) >= float(torch.linalg.eigvalsh(hessian)[-1])
    assert bounds.num_params == hessian.shape[0]


def test_gradient_is_the_whole_set_bounds():
    model, x, y = model_and_data(classes=3)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    batches = [(x[i:i + 4], y[i:i + 4]) for i in range(0, len(x), 4)]
    torch_ws.dataset_bounds(model, batches, loss=criterion, grad=True)
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    reg = torch_ws.HSRRegularizer(model, loss=criterion)
    reg(x, y).backward()   # the same bound on all samples at once
    for g, e in zip(got, (p.grad for p in model.parameters())):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-15)


def test_a_deep_network_over_the_whole_set():
    """Two hidden layers: the whole-set traces against torch.func.hessian over all samples (the
    test-only reference of tests/deep_testing.py), the gradient against HSRRegularizer on all
    samples at once (over torch.distributed: test_ranks_with_a_deep_network)."""
    from deep_testing import explicit_hessian

    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 5), nn.Softplus(), nn.Linear(5, 4), nn.Softplus(),
                          nn.Linear(4, 3)).double()
    x, y = torch.randn(17, 3, dtype=torch.float64), torch.randint(0, 3, (17,))
    loader = DataLoader(TensorDataset(x, y), batch_size=5)
    bounds = torch_ws.dataset_bounds(model, loader, loss="cross_entropy", grad=True)
    hessian = explicit_hessian(x, y, [m.weight.detach() for m in model[::2]],
                               [m.bias.detach() for m in model[::2]], "softplus", "mean",
                               "cross_entropy")
    assert float(bounds.trace) == pytest.approx(float(hessian.trace()), rel=1e-10)
    assert float(bounds.trace_sq) == pytest.approx(float((hessian * hessian).sum()), rel=1e-10)
    assert float(bounds.lambda_max_upper) >= float(torch.linalg.eigvalsh(hessian)[-1])
    assert bounds.num_params == hessian.shape[0]
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch_ws.HSRRegularizer(model, loss="cross_entropy")(x, y).backward()
    for g, e in zip(got, (p.grad for p in model.parameters())):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-15)


def test_targets_that_require_grad_are_refused():
    model, x, y = model_and_data()
    with pytest.raises(ValueError, match="dataset_bounds: the target of batch 1 requires grad"):
        torch_ws.dataset_bounds(model, [(x[:5], y[:5]), (x[5:], y[5:].requires_grad_())])


def test_errors_name_dataset_bounds_and_the_missing_loss():
    model, x, y = model_and_data(classes=3)
    with pytest.raises(ValueError, match=r"^dataset_bounds: .*loss='cross_entropy'"):
        torch_ws.dataset_bounds(model, [(x, y)])


def test_without_grad_leaves_grads_alone():
    model, x, y = model_and_data()
    torch_ws.dataset_bounds(model, [(x, y)], progress=True)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("batches, message", [
    ([], "data yielded no batches"),
    ([(torch.zeros(4, 3, dtype=torch.float64),)], r"expected each batch to be \(x, target\)"),
    ([(torch.zeros(4, 3, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)),
      (torch.zeros(4, 2, dtype=torch.float64), torch.zeros(4, dtype=torch.float64))],
     r"batch 1 has x of shape \(4, 2\)"),
    ([(torch.zeros(4, 3, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)),
      (torch.zeros(4, 3, dtype=torch.float32), torch.zeros(4, dtype=torch.float64))],
     "batch 1 has x of shape"),
    ([(torch.zeros(4, 3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))],
     "batch 0 has a target of shape"),
    ([(torch.zeros(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64))],
     r"expected x of shape \(batch, D\)"),
])
def test_bad_batches_are_refused(batches, message):
    model, _, _ = model_and_data()
    with pytest.raises((ValueError, TypeError), match=message):
        torch_ws.dataset_bounds(model, batches)


# ---- Over torch.distributed: gloo processes on this machine (loopback). ----

def _head(classes, loss_name, y):
    """The loss argument and targets of a head: bce (C = 1), cross-entropy with label smoothing,
    or the squared error against real targets (C columns drawn from y)."""
    if classes == 1:
        return "bce", y
    if loss_name == "mse":
        return "mse", torch.stack([y.double() * (c + 1) - 1 for c in range(classes)], 1)
    return nn.CrossEntropyLoss(label_smoothing=0.1), y


def _init_gloo(rank, world, init_file):
    """The gloo group of a spawned rank, with a two-minute timeout instead of gloo's thirty: the
    loopback rendezvous that now and then refuses a connection (_spawn_ranks) once instead left
    both ranks waiting in connectFullMesh (session 19); with the timeout that raises inside
    init_process_group, which _spawn_ranks retries. (The collectives here take milliseconds.)"""
    from datetime import timedelta

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=120))


def _rank_worker(rank, world, init_file, out_dir, sizes, activations, classes=1,
                 loss_name="cross_entropy", dims=(3, 4), hidden_layers=1):
    import torch.distributed as dist

    _init_gloo(rank, world, init_file)
    try:
        model, x, y = model_and_data(n=sum(sizes), d=dims[0], h=dims[1], classes=classes,
                                     hidden_layers=hidden_layers)
        loss, y = _head(classes, loss_name, y)
        if activations[rank] == "sigmoid":
            model[1] = nn.Sigmoid()
        elif activations[rank] == "wider":  # a hidden layer of 5 units instead of 4
            model, _, _ = model_and_data(n=sum(sizes), h=5, classes=classes,
                                         hidden_layers=hidden_layers)
        start = sum(sizes[:rank])
        shard = (x[start:start + sizes[rank]], y[start:start + sizes[rank]])
        batches = [(shard[0][i:i + 4], shard[1][i:i + 4]) for i in range(0, sizes[rank], 4)]
        try:
            bounds = torch_ws.dataset_bounds(model, batches, loss=loss, grad=True)
            result = {"bounds": [float(b) for b in bounds[:7]],
                      "grads": [p.grad for p in model.parameters()]}
        except ValueError as error:
            result = {"error": str(error)}
        torch.save(result, f"{out_dir}/{rank}.pt")
        dist.barrier()  # every rank done before the group goes
    finally:
        dist.destroy_process_group()


def _then_exit(rank, worker, *args):
    """worker(rank, *args), then the process ends at once (os._exit), without the interpreter's
    teardown: there gloo's threads now and then met a std::thread still joinable ("terminate
    called without an active exception", SIGABRT in one rank in about one run of the four DDP
    tests in ten, session 19; the same with the build before that session), after the rank had
    saved its results and passed the barrier. A worker that raises is reported as before."""
    import os
    import sys

    worker(rank, *args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _spawn_ranks(worker, world, tmp_path, *args):
    """worker(rank, world, rendezvous file, tmp_path, *args) on `world` gloo ranks. Gloo's loopback
    rendezvous now and then fails to connect one rank to another ("Connection refused" inside
    init_process_group; once in a clean-clone CI run, session 14): a fault of the machine's
    sockets, not of what the tests check, so that failure alone is retried, twice, each time with
    a fresh rendezvous file. Any other failure of a rank is raised at once."""
    import torch.multiprocessing as mp

    for attempt in range(3):
        try:
            mp.spawn(_then_exit, args=(worker, world, str(tmp_path / f"init{attempt}"),
                                       str(tmp_path), *args),
                     nprocs=world, join=True)
            return
        except mp.ProcessRaisedException as error:
            if attempt == 2 or "in init_process_group" not in str(error):
                raise


def _run_ranks(tmp_path, sizes, activations=None, classes=1, loss_name="cross_entropy",
               dims=(3, 4), hidden_layers=1):
    world = len(sizes)
    activations = activations or ["tanh"] * world
    _spawn_ranks(_rank_worker, world, tmp_path, sizes, activations, classes, loss_name, dims,
                 hidden_layers)
    return [torch.load(tmp_path / f"{rank}.pt") for rank in range(world)]


def _assert_every_rank_got(results, expected, model, grad_rtol=1e-12, bound_rtol=1e-12):
    """Every rank's bounds and gradients are the single-process ones (`expected`, and the
    gradient the single-process call left in `model`)."""
    for result in results:
        for got, want in zip(result["bounds"], expected[:7]):
            assert got == pytest.approx(float(want), rel=bound_rtol, abs=1e-15)
        for got, p in zip(result["grads"], model.parameters()):
            torch.testing.assert_close(got, p.grad, rtol=grad_rtol, atol=1e-15)


@pytest.mark.parametrize("engine", ["parameter", "sample"])
@pytest.mark.parametrize("sizes", [(13, 9), (7, 11, 5), (12, 0)])
def test_ranks_get_the_bounds_and_gradient_of_the_union(tmp_path, monkeypatch, sizes, engine):
    """2 and 3 gloo processes with uneven shards, one of them empty (and partial batches, tiles
    of 5 samples that do not divide N, so that every rank gets tile pairs), summing Hessian
    shares or shares of the pairs: every rank gets the single-process result on the
    concatenated data, to 1e-12."""
    monkeypatch.setenv("TORCH_WS_ENGINE", engine)  # the spawned ranks inherit it
    monkeypatch.setenv("TORCH_WS_TILE_SIZE", "5")
    results = _run_ranks(tmp_path, sizes)
    model, x, y = model_and_data(n=sum(sizes))
    expected = torch_ws.dataset_bounds(model, [(x, y)], grad=True)
    _assert_every_rank_got(results, expected, model)


@pytest.mark.parametrize("engine", ["parameter", "sample"])
@pytest.mark.parametrize("loss_name", ["cross_entropy", "mse"])
def test_ranks_with_a_head_of_three_logits(tmp_path, monkeypatch, loss_name, engine):
    """Cross-entropy with label smoothing, and the squared error ("mean" over N·C), on C = 3
    logits over 2 ranks, in both orders (the sample-space one in blocks of 4 samples): the
    single-process result."""
    monkeypatch.setenv("TORCH_WS_ENGINE", engine)
    monkeypatch.setenv("TORCH_WS_TILE_SIZE", "4")
    results = _run_ranks(tmp_path, (10, 7), classes=3, loss_name=loss_name)
    model, x, y = model_and_data(n=17, classes=3)
    loss, y = _head(3, loss_name, y)
    expected = torch_ws.dataset_bounds(model, [(x, y)], loss=loss, grad=True)
    _assert_every_rank_got(results, expected, model)


def test_ranks_with_ten_logits_beyond_the_hessian_limit(tmp_path):
    """C = 10, D = H = 64: n = 4810 > 4096, which the ranks once refused for heads of C ≥ 2
    logits; now the sample-space order splits like one process's: the single-process result."""
    results = _run_ranks(tmp_path, (13, 11), classes=10, dims=(64, 64))
    model, x, y = model_and_data(n=24, d=64, h=64, classes=10)
    assert torch_ws.num_params(model[0].weight, model[0].bias, model[2].weight,
                               model[2].bias) == 4810
    loss, y = _head(10, "cross_entropy", y)
    expected = torch_ws.dataset_bounds(model, [(x, y)], loss=loss, grad=True)
    _assert_every_rank_got(results, expected, model, grad_rtol=1e-11)


@pytest.mark.parametrize("engine", ["parameter", "sample"])
@pytest.mark.parametrize("sizes", [(13, 9), (7, 0, 5)])
def test_ranks_with_a_deep_network(tmp_path, monkeypatch, sizes, engine):
    """Two hidden layers, C = 3, the squared error, over 2 and 3 ranks (one empty). With the
    assembled Hessian each rank assembles its samples' blocks and the ranks all-reduce H
    (docs/math.md §12.7); with the Gram forms each rank evaluates its rows of the pair sums and
    the ranks all-reduce the traces (§12.4). Either way every rank gets the single-process bounds
    and gradient (the bounds to 1e-9: they widen by the all-reduced certified errors rather than
    by the single process's, both ~1e-11 of them); ranks whose layers differ are told which."""
    monkeypatch.setenv("TORCH_WS_ENGINE", engine)  # the spawned ranks inherit it
    results = _run_ranks(tmp_path, sizes, classes=3, loss_name="mse", hidden_layers=2)
    model, x, y = model_and_data(n=sum(sizes), classes=3, hidden_layers=2)
    loss, y = _head(3, "mse", y)
    expected = torch_ws.dataset_bounds(model, [(x, y)], loss=loss, grad=True)
    _assert_every_rank_got(results, expected, model, grad_rtol=1e-10, bound_rtol=1e-9)
    if len(sizes) == 2:
        results = _run_ranks(tmp_path, (6, 6), activations=["tanh", "wider"], classes=3,
                             loss_name="mse", hidden_layers=2)
        assert all("the ranks disagree on layer shapes" in r["error"] for r in results)


@pytest.mark.parametrize("engine, op", [("parameter", "_deep_assembled_hessian"),
                                        ("sample", "_deep_gram_form_traces")])
def test_a_deep_share_is_evaluated_once_for_bounds_and_gradient(tmp_path, monkeypatch, engine,
                                                                  op):
    """With grad=True the rank's share (its block of H, or its rows of the pair sums) is
    evaluated once, with autograd recording, and the gradient is taken from that evaluation: one
    call of the share's op (a group of one gloo rank in this process), and the bounds and
    gradient of the call without a group."""
    import torch.distributed as dist

    monkeypatch.setenv("TORCH_WS_ENGINE", engine)
    model, x, y = model_and_data(n=9, classes=3, hidden_layers=2)
    loss, y = _head(3, "mse", y)
    expected = torch_ws.dataset_bounds(model, [(x, y)], loss=loss, grad=True)
    expected_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    calls = []
    share_op = getattr(torch.ops.torch_ws, op)
    monkeypatch.setattr(torch.ops.torch_ws, op,
                        lambda *args: calls.append(1) or share_op(*args))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0,
                            world_size=1)
    try:
        bounds = torch_ws.dataset_bounds(model, [(x, y)], loss=loss, grad=True)
    finally:
        dist.destroy_process_group()
    assert len(calls) == 1
    for got, want in zip(bounds[:7], expected[:7]):
        assert float(got) == pytest.approx(float(want), rel=1e-9, abs=1e-15)
    for p, want in zip(model.parameters(), expected_grads):
        torch.testing.assert_close(p.grad, want, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("other, message", [
    ("sigmoid", "the ranks disagree on activation: "),
    ("wider", "the ranks disagree on W1 shape: (4, 3) here, (5, 3) on rank 1"),
])
def test_ranks_that_disagree_are_told_so(tmp_path, other, message):
    results = _run_ranks(tmp_path, (6, 6), activations=["tanh", other])
    for result in results:
        assert message.split(":")[0] in result["error"]   # every rank is told
    assert message in results[0]["error"]


def _ddp_problem(per_rank, world, classes, hidden_layers):
    """The DDP tests' model and union of batches, and its training loss: BCE on one logit,
    cross-entropy on several."""
    model, x, y = model_and_data(n=per_rank * world, classes=classes, hidden_layers=hidden_layers)
    if classes == 1:
        return model, x, y, "bce", lambda z, t: nn.functional.binary_cross_entropy_with_logits(
            z.squeeze(1), t)
    return model, x, y, "cross_entropy", nn.functional.cross_entropy


def _ddp_worker(rank, world, init_file, out_dir, per_rank, classes, hidden_layers):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    _init_gloo(rank, world, init_file)
    try:
        model, x, y, loss, loss_fn = _ddp_problem(per_rank, world, classes, hidden_layers)
        ddp = DistributedDataParallel(model)
        reg = torch_ws.HSRRegularizer(ddp, loss=loss, global_batch=True)
        mine = slice(rank * per_rank, (rank + 1) * per_rank)
        objective = loss_fn(ddp(x[mine]), y[mine]) + 0.1 * reg(x[mine], y[mine])
        objective.backward()
        torch.save({"bound": float(reg(x[mine], y[mine]).detach()),
                    "grads": [p.grad for p in model.parameters()]}, f"{out_dir}/{rank}.pt")
        # DDP's reducer holds communication threads: release it, and let every rank get here,
        # before the group goes (a rank tearing down early can abort the other's exit).
        del reg, ddp
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _assert_ddp_gives_the_union(tmp_path, classes, hidden_layers, bound_rtol, grad_rtol):
    """2 gloo ranks with 8 samples each, HSRRegularizer(global_batch=True) under DDP: every
    rank's bound and averaged gradient are one process's on the union of the batches."""
    world, per_rank = 2, 8
    _spawn_ranks(_ddp_worker, world, tmp_path, per_rank, classes, hidden_layers)
    model, x, y, loss, loss_fn = _ddp_problem(per_rank, world, classes, hidden_layers)
    bound = torch_ws.HSRRegularizer(model, loss=loss)(x, y)
    (loss_fn(model(x), y) + 0.1 * bound).backward()
    for rank in range(world):
        result = torch.load(tmp_path / f"{rank}.pt")
        assert result["bound"] == pytest.approx(float(bound.detach()), rel=bound_rtol)
        for got, p in zip(result["grads"], model.parameters()):
            torch.testing.assert_close(got, p.grad, rtol=grad_rtol, atol=1e-14)


@pytest.mark.parametrize("engine", ["parameter", "sample"])
def test_regularizer_over_the_global_batch_under_ddp(tmp_path, monkeypatch, engine):
    """HSRRegularizer(global_batch=True) under DistributedDataParallel (2 gloo ranks, equal
    shards): after DDP averages, every rank holds the gradient of mean BCE + ρ·bound over the
    union of the batches, and the bound is the union's."""
    monkeypatch.setenv("TORCH_WS_ENGINE", engine)
    _assert_ddp_gives_the_union(tmp_path, classes=1, hidden_layers=1, bound_rtol=1e-12,
                                grad_rtol=1e-11)


@pytest.mark.parametrize("engine", ["parameter", "sample"])
def test_deep_regularizer_over_the_global_batch_under_ddp(tmp_path, monkeypatch, engine):
    """A network with two hidden layers and three classes, HSRRegularizer(global_batch=True)
    under DistributedDataParallel (2 gloo ranks): the ranks split the assembled Hessian, or the
    Gram forms' pair sums by rows; after DDP averages, every rank holds the gradient of mean
    cross-entropy + ρ·bound over the union, and the bound is the union's (to 1e-9: the split
    widens by the all-reduced certified errors)."""
    monkeypatch.setenv("TORCH_WS_ENGINE", engine)
    _assert_ddp_gives_the_union(tmp_path, classes=3, hidden_layers=2, bound_rtol=1e-9,
                                grad_rtol=1e-9)


def test_global_batch_needs_a_process_group():
    model, x, y = model_and_data()
    with pytest.raises(RuntimeError, match="needs torch.distributed to be initialized"):
        torch_ws.HSRRegularizer(model, global_batch=True)(x, y)
    with pytest.raises(ValueError, match="global_batch=True is implemented for bound='ws'"):
        torch_ws.HSRRegularizer(model, bound="spectral", global_batch=True)
