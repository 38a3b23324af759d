"""Write a synthetic profile (see ``features.synthetic``) as a profile folder.

Output is deterministic: the same profile gives byte-identical files (no
wall-clock metadata is written). The Parquet files carry no Arrow schema, so
dictionary-encoded columns read back as plain strings, as the profile contract
expects.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from features.synthetic import SyntheticProfile

__all__ = ["PARAMS_FILE", "TABLE_FILES", "synthetic_params_document", "write_synthetic_profile"]

#: File name of each written table.
TABLE_FILES: dict[str, str] = {
    "customers": "customers.parquet",
    "orders": "orders.parquet",
    "events": "events.parquet",
    "truth": "truth.parquet",
}
PARAMS_FILE = "generator_params.json"

# Each table is sorted by its time column (customers by created_at, and so on).
_SORTED_TIME_COLUMNS = frozenset({"created_at", "ordered_at", "occurred_at"})
_ROW_GROUP_ROWS = 1 << 20


def synthetic_params_document(profile: SyntheticProfile) -> dict[str, object]:
    """Everything needed to reproduce the profile and to check fitted parameters."""
    p = profile.params
    return {
        "generator": "features.synthetic.generate_profile",
        "seed": profile.seed,
        "n_customers": profile.n_customers,
        "data_start": profile.data_start.isoformat(),
        "data_end": profile.data_end.isoformat(),
        "truth_as_of": profile.truth_as_of.isoformat(),
        "truth_horizon_days": profile.truth_horizon_days,
        "bgnbd": {"r": p.bgnbd_r, "alpha": p.bgnbd_alpha, "a": p.bgnbd_a, "b": p.bgnbd_b, "time_unit": "day"},
        "gamma_gamma": {"p": p.gg_p, "q": p.gg_q, "gamma": p.gg_gamma, "currency": "USD"},
        "row_counts": {name: getattr(profile, name).num_rows for name in TABLE_FILES},
        "params": asdict(p),
    }


def write_synthetic_profile(profile: SyntheticProfile, out_dir: Path) -> list[Path]:
    """Write customers/orders/events/truth Parquet files and generator_params.json.

    Creates ``out_dir`` if needed, overwrites existing files, and returns the
    written paths in a fixed order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / file_name for file_name in TABLE_FILES.values()]
    # Tables are independent files and pyarrow releases the GIL while encoding, so two
    # are written at a time (largest first); the bytes do not depend on the scheduling.
    jobs = sorted(zip(TABLE_FILES, written), key=lambda job: -getattr(profile, job[0]).num_rows)
    with ThreadPoolExecutor(max_workers=2) as pool:
        for future in [pool.submit(_write_table, getattr(profile, name), path) for name, path in jobs]:
            future.result()
    params_path = out_dir / PARAMS_FILE
    text = json.dumps(synthetic_params_document(profile), indent=2, sort_keys=True) + "\n"
    params_path.write_text(text, encoding="utf-8")
    written.append(params_path)
    return written


def _write_table(table: pa.Table, path: Path) -> None:
    names = set(table.column_names)
    pq.write_table(
        table,
        path,
        row_group_size=_ROW_GROUP_ROWS,
        compression="zstd",
        compression_level=1,
        # Dictionary pages for the low-cardinality (dictionary-typed) columns only.
        use_dictionary=[f.name for f in table.schema if pa.types.is_dictionary(f.type)],
        # The time columns are sorted: delta encoding is smaller and faster to write.
        column_encoding={c: "DELTA_BINARY_PACKED" for c in sorted(_SORTED_TIME_COLUMNS & names)},
        store_schema=False,  # dictionary columns read back as plain strings
    )
