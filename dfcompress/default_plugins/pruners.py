from dfcompress import hookimpl


@hookimpl
def register_pruners(register):
    register("dfcompress.prune.pruners:L1Pruner", name="l1", summary="filter L1 norm (torch-pruning)")
    register("dfcompress.prune.pruners:L2Pruner", name="l2", summary="filter L2 norm (torch-pruning)")
    register("dfcompress.prune.pruners:BNScalePruner", name="bn_scale",
             summary="BatchNorm scale magnitude (torch-pruning)")
    register("dfcompress.prune.pruners:TaylorPruner", name="taylor",
             summary="first-order Taylor importance from synthetic batches (torch-pruning)")
    register("dfcompress.prune.pruners:RandomPruner", name="random", summary="random channels (baseline)")
