"""One training step as data: the phases Gmain, Greg, Dmain, Dreg of the official StyleGAN2-ADA /
StyleGAN3 loop (training/training_loop.py there), generalised to every model.

Each phase updates one network with its own optimizer step:
  Gmain  G's adversarial loss on fakes of fresh latents
  Greg   the path-length penalty (StyleGAN2), every `pl_every` steps
  Dmain  D's adversarial loss on reals and fakes (+ drift, WGAN-GP, bCR where the model has them);
         the generator pass that makes these fakes is the only one that updates G's running
         statistics (w_avg, StyleGAN3's magnitude EMAs), once per step as the official update_emas
  Dreg   R1 on reals, every `r1_every` steps
A regulariser that runs every step (StyleGAN's R1) is folded into its main phase instead: Gboth /
Dboth, one optimizer step. The order of G and D phases is the model's official one
(`loss.phase_order`). Each phase draws its own latents (official: one z per phase). What each phase
computes is facegan/training/loss.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from facegan import settings


@dataclass(frozen=True)
class Phase:
    name: str  # Gmain | Greg | Gboth | Dmain | Dreg | Dboth
    net: str  # "G" | "D": the network this phase updates
    interval: int  # runs on the steps where step % interval == 0
    main: bool  # computes the adversarial terms
    reg: bool  # computes the regulariser

    def runs_at(self, step: int) -> bool:
        return step % self.interval == 0


def _net_phases(net: str, regularised: bool, every: int) -> list[Phase]:
    if not regularised:
        return [Phase(f"{net}main", net, 1, True, False)]
    if every == 1:
        return [Phase(f"{net}both", net, 1, True, True)]
    return [Phase(f"{net}main", net, 1, True, False), Phase(f"{net}reg", net, every, False, True)]


def build_phases(loss: settings.LossSettings) -> list[Phase]:
    """The phases of a model's `loss` params, in its official order."""
    g = _net_phases("G", loss.pl_weight > 0, loss.pl_every)
    d = _net_phases("D", loss.r1_gamma > 0, loss.r1_every)
    return g + d if loss.phase_order == "GD" else d + g


def lazy_interval(phases: list[Phase], net: str) -> int:
    """The lazy regulariser's interval of `net` (1 when it has none): its Adam is rescaled by it."""
    return max((p.interval for p in phases if p.net == net and not p.main), default=1)
