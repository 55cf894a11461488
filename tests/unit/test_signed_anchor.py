"""Signed seal anchors: the anchor file cannot be rolled back without the signing key.

The attack (reproduced in the robustness review): delete the last events and their seals,
then write the checkpoint of the previous seal, computable from the seals table, into the
anchor file. The shorter store matches that checkpoint, so an unsigned anchor said OK. The
sealer now signs every line with the deployment's audit key, and ``chorus audit verify``
requires the signature whenever it knows the public key.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from chorus.audit.bundle import create_signing_key, public_key_text
from chorus.audit.ledger import (
    Checkpoint,
    anchor_line,
    append_anchor,
    parse_anchor,
    read_signed_anchor,
)
from chorus.cli import main
from chorus.engine.adapters.sealer import Sealer
from chorus.store.datastore import close_recorder
from chorus.store.recorder import open_recorder

from tests.unit.test_tamper import (
    rows,
    sealed_store,  # noqa: F401  (a fixture)
    tamper,
)


def seals(path: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT position, running_hash FROM chorus_seals ORDER BY 1").fetchall()


def anchor_file(data_dir: Path) -> Path:
    return data_dir / "audit" / "seal-anchor"


async def sealed_and_anchored(store: Path, data_dir: Path) -> Checkpoint:
    """Run the engine's sealer with the deployment's key until the anchor names the head."""
    key, _ = create_signing_key(data_dir / "audit" / "signing.key")
    recorder = open_recorder(f"sqlite:///{store}")
    head = recorder.max_notification_id()
    path = anchor_file(data_dir)
    task = asyncio.create_task(
        Sealer(recorder, anchor_path=path, anchor_key=key, idle_interval=0.01).run()
    )
    try:
        for _ in range(1000):
            anchor = read_signed_anchor(path) if path.exists() else None
            if anchor is not None and anchor.checkpoint.position == head:
                return anchor.checkpoint
            await asyncio.sleep(0.01)
        raise AssertionError("the sealer never anchored the head")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        close_recorder(recorder)


async def test_rolling_the_anchor_back_to_the_previous_seal_is_caught(
    sealed_store: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data_dir = tmp_path / "data"
    head = await sealed_and_anchored(sealed_store, data_dir)
    verify = ["audit", "verify", "--database-url", f"sqlite:///{sealed_store}",
              "--data-dir", str(data_dir)]  # fmt: skip
    assert main(verify) == 0
    assert f"matches anchor {head}" in capsys.readouterr().out

    # The attack: cut the last event and its seal, anchor the previous seal instead.
    last = rows(sealed_store)[-1][0]
    assert last == head.position
    tamper(sealed_store, ("DELETE FROM stored_events WHERE rowid=?", (last,)),
           ("DELETE FROM chorus_seals WHERE position=?", (last,)))  # fmt: skip
    position, running = seals(sealed_store)[-1]
    anchor_file(data_dir).write_text(f"{position}:{running}\n")
    assert main(verify) == 1
    err = capsys.readouterr().err
    assert "BROKEN" in err and "is not signed" in err

    # Signing it with another key does not help either.
    other, _ = create_signing_key(tmp_path / "other.key")
    previous = Checkpoint(position=position, running_hash=running)
    anchor_file(data_dir).write_text(anchor_line(previous, other) + "\n")
    assert main(verify) == 1
    assert "does not verify" in capsys.readouterr().err


async def test_an_auditor_pins_the_public_key_and_a_replaced_key_is_caught(
    sealed_store: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data_dir = tmp_path / "data"
    await sealed_and_anchored(sealed_store, data_dir)
    pinned = public_key_text(create_signing_key(data_dir / "audit" / "signing.key")[0])
    verify = ["audit", "verify", "--database-url", f"sqlite:///{sealed_store}",
              "--data-dir", str(data_dir), "--anchor-public-key", pinned]  # fmt: skip
    assert main(verify) == 0
    # Whoever replaces the deployment's key can sign what they like, but not as the
    # key the auditor pinned.
    (data_dir / "audit" / "signing.key").unlink()
    key, _ = create_signing_key(data_dir / "audit" / "signing.key")
    anchor = read_signed_anchor(anchor_file(data_dir))
    assert anchor is not None
    append_anchor(anchor_file(data_dir), anchor.checkpoint, key)
    assert main(verify) == 1
    assert "does not verify" in capsys.readouterr().err
    assert main([*verify[:-2]]) == 0  # against the new key alone it verifies


def test_anchor_lines_parse_signed_and_unsigned_and_refuse_junk(tmp_path: Path) -> None:
    key, _ = create_signing_key(tmp_path / "k")
    checkpoint = Checkpoint(position=7, running_hash="a" * 64)
    signed = parse_anchor(anchor_line(checkpoint, key))
    assert signed.checkpoint == checkpoint and signed.signed_by(key.public_key())
    unsigned = parse_anchor(str(checkpoint))
    assert unsigned.signature is None and not unsigned.signed_by(key.public_key())
    other = Checkpoint(position=8, running_hash="a" * 64)
    assert not parse_anchor(
        f"{other} sig={anchor_line(checkpoint, key).split('sig=')[1]}"
    ).signed_by(key.public_key())
    for junk in (f"{checkpoint} signature", f"{checkpoint} sig=!!!", "7:zz"):
        with pytest.raises(ValueError, match="not a"):
            parse_anchor(junk)
