"""Expected store contents of the test records (shared by the voxel data tests)."""

from __future__ import annotations

import numpy as np
import torch

from tasks.voxels.data import GEOM_DRUGS_ELEMENTS, VoxelStore
from tests.tasks.voxels.molecules import STANDARD

#: STANDARD molecules the GEOM-drugs channels keep (CP(C)C has P, CCI has I).
KEPT = [(smi, n) for smi, n in STANDARD if smi not in ("CP(C)C", "CCI")]
CHANNEL = {sym: i for i, sym in enumerate(GEOM_DRUGS_ELEMENTS)}


def expected(records):
    """(smiles, [(channels, coords)]) of the first ≤5 conformers of the kept molecules."""
    out = []
    for smi, mols in records:
        syms = [a.GetSymbol() for a in mols[0].GetAtoms()]
        if any(s not in CHANNEL for s in syms):
            continue
        ch = np.array([CHANNEL[s] for s in syms])
        out.append((smi, [(ch, m.GetConformer().GetPositions()) for m in mols[:5]]))
    return out


def check_store(store: VoxelStore, records, atol: float = 2e-6) -> None:
    exp = expected(records)
    assert store.n_molecules == len(exp)
    assert len(store) == sum(len(c) for _, c in exp)
    i = 0
    for mol_id, (smi, confs) in enumerate(exp):
        assert store.smiles(mol_id) == smi
        for j, (ch, x) in enumerate(confs):
            item = store[i]
            assert int(store.molecule_id[i]) == mol_id and int(store.conformer_index[i]) == j
            assert torch.equal(item["elements"], torch.from_numpy(ch))
            np.testing.assert_allclose(item["coords"].numpy(), x - x.mean(0), atol=atol)  # centred, float32
            assert item["coords"].dtype == torch.float32 and item["elements"].dtype == torch.long
            i += 1
