"""Worker of tests/test_lightning.py: WeightshareCallback under ``Trainer(devices=2, strategy="ddp")`` on digits.

``python lightning_ddp.py OUT`` (Lightning starts the second process) fits a small classifier with soft
weight-sharing and with PWFN, whose own parameters (the mixture, the sigmas) live outside DDP. After every
optimizer step the two ranks all_gather the module's parameters, the method's state and its parameters and
compare them exactly; rank 0 writes ``OUT/<method>.json`` (steps compared, entries that differed) and the
callback writes the run directory ``OUT/<method>``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from weightshare import DataConfig, PWFNConfig, SWSConfig, build_model, load_data
from weightshare.lightning import WeightshareCallback


class Classifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = build_model("mlp")

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class Compare(pl.Callback):
    """After the weightshare callback's after_step: are the ranks still equal, value for value?"""

    def __init__(self, compress: WeightshareCallback) -> None:
        self.compress, self.seen = compress, {"steps": 0, "differ": []}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        method = self.compress.method
        state = {f"module.{k}": v for k, v in pl_module.state_dict().items()}
        state |= {f"method.{k}": v for k, v in method.state_dict().items() if isinstance(v, torch.Tensor)}
        state |= {f"param.{i}": p for i, p in enumerate(self.compress._outside)}
        flat = torch.cat([v.detach().double().reshape(-1) for v in state.values()])
        gathered = [torch.empty_like(flat) for _ in range(trainer.world_size)]
        torch_dist.all_gather(gathered, flat)
        self.seen["steps"] += 1
        if not all(torch.equal(g, flat) for g in gathered):
            self.seen["differ"].append(trainer.global_step)


def main(out: Path) -> None:
    data = load_data(DataConfig(dataset="digits"))
    train = TensorDataset(data.train.x[:512], data.train.y[:512])
    pwfn = PWFNConfig.preset("digits")
    pwfn.schedule, pwfn.first_epochs, pwfn.rest_epochs, pwfn.train.epochs = [0.5, 1.0], 1, 1, 2
    sws = SWSConfig.preset("digits")
    sws.train.epochs = 2
    sws.distill.kd_temp = 0.0  # the callback refuses distillation: it never sees the batch's logits
    for name, config in {"sws": sws, "pwfn": pwfn}.items():
        torch.manual_seed(0)
        compress = WeightshareCallback(config, out / name, n_train=len(train))
        compare = Compare(compress)
        trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=config.train.epochs,
                             callbacks=[compress, compare], logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
        trainer.fit(Classifier(), DataLoader(train, batch_size=32, shuffle=True))
        if trainer.is_global_zero:
            (out / f"{name}.json").write_text(json.dumps({**compare.seen, "world": trainer.world_size}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
