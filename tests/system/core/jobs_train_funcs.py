"""Train functions a Ray Job imports by dotted path (``jobs_train_funcs:tiny_torch``); the
job tests put this folder on the job's PYTHONPATH."""

from __future__ import annotations

import os


def tiny_torch():
    """One rank, a linear model over the 'train' dataset, saved as a state dict."""
    import torch
    import torch.distributed as dist

    from shardtrain import get_context

    context = get_context()
    dist.init_process_group(backend=context.get_default_backend())
    features = context.get_hyper_params()["features"]
    model = torch.nn.Linear(len(features), 1)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05)
    dataset = context.get_dataset_map()["train"].get_shard().to_torch_dataset(batch_size=256)
    for batch in dataset:
        x = torch.stack([batch[f].float() for f in features], dim=1)
        loss = torch.nn.functional.mse_loss(model(x).squeeze(1), batch["Y"].float())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    torch.save(model.state_dict(), os.path.join(context.get_model_dir(), "model.pt"))
    dist.destroy_process_group()
