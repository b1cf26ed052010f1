"""Fixtures for the flow-matching tests: real structure text to edit, a shared parse cache, an
exactly equivariant stand-in velocity model."""

from __future__ import annotations

import gzip

import pytest
import torch
from torch import nn

from tasks.flowmatching.data import ProteinChainDataModule, mdanalysistests_data_dir


@pytest.fixture(scope="session")
def data_dir():
    return mdanalysistests_data_dir()


@pytest.fixture(scope="session")
def ahs_lines(data_dir) -> list[str]:
    """ATOM lines of the DSSP test chain 1AHS:A (126 residues, numbered 126–251; no header)."""
    text = gzip.open(data_dir / "dssp" / "1ahsA.pdb.gz", "rt").read()
    return [line for line in text.splitlines() if line.startswith("ATOM")]


def residues_of(lines: list[str]) -> list[list[str]]:
    """ATOM lines grouped by residue, in file order."""
    groups: list[list[str]] = []
    last = None
    for line in lines:
        key = line[17:27]
        if key != last:
            groups.append([])
            last = key
        groups[-1].append(line)
    return groups


def renumber(groups: list[list[str]], start: int = 1, chain: str | None = None) -> list[str]:
    """Residues renumbered consecutively from ``start`` (optionally moved to another chain id)."""
    out = []
    for i, res in enumerate(groups):
        for line in res:
            line = line[:22] + f"{start + i:4d}" + line[26:]
            if chain is not None:
                line = line[:21] + chain + line[22:]
            out.append(line)
    return out


def write_pdb(path, lines: list[str], header: list[str] = ()) -> None:
    path.write_text("\n".join(list(header) + list(lines) + ["END"]) + "\n")


@pytest.fixture(scope="session")
def embedded_cache(tmp_path_factory):
    """One parse cache for every test that sets up the embedded data (parsing happens once)."""
    return str(tmp_path_factory.mktemp("fm_cache"))


@pytest.fixture(scope="session")
def embedded_dm(embedded_cache):
    dm = ProteinChainDataModule(root=None, cache_dir=embedded_cache, min_length=30, max_length=300, deduplicate_sequences=True, heldout=12)
    dm.setup()
    return dm


class EquivariantVelocity(nn.Module):
    """Exactly rotation-equivariant stand-in for the velocity network (same forward signature):

    ``v̂_i = a(t)·x_t,i + b·x_sc,i + Σ_j m_j ψ(|x_t,i − x_t,j|, t)(x_t,i − x_t,j)`` (masked).
    """

    def __init__(self, hidden: int = 8):
        super().__init__()
        self.a = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.b = nn.Parameter(torch.tensor(0.3))
        self.psi = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x_t, t, x_sc, residue_index, chain_break, mask):
        m = mask[..., None].to(x_t.dtype)
        tt = t.to(x_t.dtype)
        diff = x_t[:, :, None, :] - x_t[:, None, :, :]
        d = diff.norm(dim=-1, keepdim=True)
        feats = torch.cat([d, tt[:, None, None, None].expand_as(d)], dim=-1)
        pair = (self.psi(feats) * diff * mask[:, None, :, None].to(x_t.dtype)).sum(2)
        v = self.a(tt[:, None])[:, :, None] * x_t + pair
        if x_sc is not None:
            v = v + self.b * x_sc
        return v * m


@pytest.fixture
def equivariant_model():
    torch.manual_seed(0)
    return EquivariantVelocity().double()
