"""Crafted model packages: compressed, oversized or inconsistent members are refused in one line, before they are
read, in little memory; packages are written with every member stored, and those of 0.1.0 (text deflated) still read.

The packages are generated here: a tiny planned network's package, and zip files written byte by byte where a
member's sizes or compression must lie (zipfile writes only honest ones)."""

import hashlib
import json
import struct
import tracemalloc
import zipfile
import zlib

import pytest
import torch
import yaml

from napari_pgps.cli import main
from napari_pgps.config import RunConfig
from napari_pgps.engine.file_names import CONFIG_FILE, MANIFEST, MODEL_CARD, ONNX, SPLITS_FILE, WEIGHTS
from napari_pgps.engine.package import MAX_TEXT_BYTES, planned_bytes, read_model_package, weights_bytes, write_model_package
from napari_pgps.errors import CheckpointError
from napari_pgps.models import build_network, level_channels, plan_unet

GIB = 2**30
MEMORY_BUDGET = 64 * 2**20
"""The most Python may allocate while a crafted package is refused (the probe's bar: 1 GB)."""


def _tiny_config() -> RunConfig:
    """A resolved configuration of a small DynUNet (patch 8 x 32 x 32, 8 base channels, 2 labels)."""
    config = RunConfig()
    config.labels = {0: "background", 1: "lesion"}
    model = config.model
    model.architecture, model.patch_size, model.base_channels, model.spacing = "dynunet", (8, 32, 32), 8, (2.5, 0.8, 0.8)
    plan = plan_unet(model.patch_size, model.spacing)
    model.kernel_sizes, model.strides, model.out_channels = plan.kernel_sizes, plan.strides, 2
    model.channels = level_channels(len(plan.strides), model.base_channels, model.max_channels)
    return config


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    config = _tiny_config()
    members = {WEIGHTS: weights_bytes(build_network(config.model).state_dict()),
               CONFIG_FILE: yaml.safe_dump(config.to_dict()).encode(), SPLITS_FILE: b'{"training": [], "validation": []}\n',
               MODEL_CARD: b"# a tiny model\n"}
    return write_model_package(tmp_path_factory.mktemp("package") / "tiny.zip", members, {"kind": "FP"})


def _members(path):
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _listed(data: bytes) -> dict:
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _write_zip(target, entries):
    """A zip file written byte by byte: ``entries`` are (name, method, the bytes as stored, file_size, CRC-32).

    zipfile would write the true sizes; here a header may say what the test needs it to."""
    with open(target, "wb") as out:
        central = b""
        for name, method, stored, file_size, crc in entries:
            offset, encoded = out.tell(), name.encode()
            fields = (20, 0, method, 0, 33, crc, len(stored), file_size, len(encoded))
            out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, *fields, 0) + encoded + stored)
            central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, *fields, 0, 0, 0, 0, 0, offset) + encoded
        start = out.tell()
        out.write(central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central), start, 0))
    return target


def _stored(name, data):
    return name, zipfile.ZIP_STORED, data, len(data), zlib.crc32(data)


def _zeros_deflated(gibibytes: int = 1) -> bytes:
    """A raw deflate stream of ``gibibytes`` GiB of zeros (about 1 MB): one MiB compressed after a full flush comes out
    the same each time, so it is repeated."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    mebibyte = bytes(2**20)
    compressor.compress(mebibyte)
    compressor.flush(zlib.Z_FULL_FLUSH)
    piece = compressor.compress(mebibyte) + compressor.flush(zlib.Z_FULL_FLUSH)
    return piece * (1024 * gibibytes) + compressor.flush(zlib.Z_FINISH)


def _crafted(package, target, name, entry, *, listed_bytes=None):
    """The package with member ``name`` written as ``entry`` (name, method, stored, file_size, crc); the manifest lists
    it with ``listed_bytes`` (else the entry's file_size) and the hash of the zeros it claims."""
    members = _members(package)
    manifest = json.loads(members.pop(MANIFEST))
    _, _, _, file_size, _ = entry
    manifest["members"][name] = {"bytes": file_size if listed_bytes is None else listed_bytes,
                                 "sha256": hashlib.sha256(b"").hexdigest()}
    entries = [_stored(MANIFEST, json.dumps(manifest).encode())]
    entries += [entry if n == name else _stored(n, data) for n, data in members.items()]
    if name not in members:
        entries.append(entry)
    return _write_zip(target, entries)


def _refusal(path) -> str:
    """The one-line message refusing ``path``, checked to have cost at most MEMORY_BUDGET of Python allocations."""
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError) as refused:
            read_model_package(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_BUDGET, f"refusing {path.name} took {peak / 2**20:.0f} MiB"
    message = str(refused.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


def test_every_member_is_written_stored_and_the_package_reads_back(package):
    with zipfile.ZipFile(package) as archive:
        assert {info.filename: info.compress_type for info in archive.infolist()} == dict.fromkeys(
            [MANIFEST, WEIGHTS, CONFIG_FILE, SPLITS_FILE, MODEL_CARD], zipfile.ZIP_STORED)
    payload = read_model_package(package)
    model = build_network(_tiny_config().model).state_dict()
    assert payload["model"].keys() == model.keys() and payload["config"]["labels"] == {0: "background", 1: "lesion"}


def test_a_package_of_0_1_0_with_deflated_text_members_still_reads(tmp_path, package):
    old = tmp_path / "old.zip"
    with zipfile.ZipFile(old, "w") as archive:  # as 0.1.0 wrote them: the text deflated, the weights stored
        for name, data in _members(package).items():
            archive.writestr(name, data, zipfile.ZIP_STORED if name == WEIGHTS else zipfile.ZIP_DEFLATED)
    assert read_model_package(old)["model"].keys() == read_model_package(package)["model"].keys()


def test_weights_that_inflate_from_1_mb_to_1_gib_are_refused_in_little_memory(tmp_path, package, capsys):
    bomb = _zeros_deflated()
    assert len(bomb) < 2 * 2**20
    path = _crafted(package, tmp_path / "bomb.zip", WEIGHTS, (WEIGHTS, zipfile.ZIP_DEFLATED, bomb, GIB, 0))
    assert "weights.pt is compressed" in _refusal(path)
    assert main(["export", "--model", str(path), "--out", str(tmp_path / "again.zip")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1 and not (tmp_path / "again.zip").exists()


def test_a_text_member_that_would_inflate_past_its_bound_is_refused_unread(tmp_path, package):
    card = (MODEL_CARD, zipfile.ZIP_DEFLATED, _zeros_deflated(), GIB, 0)
    path = _crafted(package, tmp_path / "card.zip", MODEL_CARD, card)
    assert f"model_card.md holds 1,073,741,824 bytes, more than the {MAX_TEXT_BYTES:,}" in _refusal(path)


def test_a_header_that_understates_a_deflated_member_stops_the_inflating_at_its_size(tmp_path, package):
    """zipfile stops inflating at the zip's file_size: the 1 GiB behind a header that says 100 bytes is never made."""
    card = (MODEL_CARD, zipfile.ZIP_DEFLATED, _zeros_deflated(), 100, 0)
    path = _crafted(package, tmp_path / "liar.zip", MODEL_CARD, card)
    assert "model_card.md cannot be read (BadZipFile: Bad CRC-32" in _refusal(path)


@pytest.mark.parametrize("case", ["manifest says more", "manifest says less", "stored size differs"])
def test_sizes_that_disagree_are_refused_before_reading(tmp_path, package, case):
    data = _members(package)[WEIGHTS]
    entry = _stored(WEIGHTS, data)
    if case == "stored size differs":  # a stored member's compress_size must be its file_size
        entry = (WEIGHTS, zipfile.ZIP_STORED, data, len(data) - 1000, zlib.crc32(data[:-1000]))
    listed = {"manifest says more": len(data) + 1, "manifest says less": len(data) - 1}.get(case, len(data) - 1000)
    path = _crafted(package, tmp_path / "sizes.zip", WEIGHTS, entry, listed_bytes=listed)
    assert "weights.pt is not the file its manifest describes (the manifest says" in _refusal(path)


@pytest.mark.parametrize("name", [WEIGHTS, ONNX])
def test_a_binary_member_larger_than_the_planned_network_is_refused_unread(tmp_path, package, name):
    """The bound: the planned network's float32 bytes x 1.25 + 4 MiB (about 5.8 MB for this one); 8 MB of real
    tensors beyond the network's are refused before torch reads them, as is an ONNX graph of that size."""
    limit = int(planned_bytes(_tiny_config().model) * 1.25) + 4 * 2**20
    weights = read_model_package(package)["model"]
    data = weights_bytes({**weights, "extra": torch.zeros(2 * 2**20)}) if name == WEIGHTS else bytes(limit + 1)
    members = _members(package)
    manifest = json.loads(members.pop(MANIFEST))
    members[name], manifest["members"][name] = data, _listed(data)
    path = _write_zip(tmp_path / "large.zip", [_stored(MANIFEST, json.dumps(manifest).encode()),
                                               *(_stored(n, d) for n, d in members.items())])
    message = _refusal(path)
    assert f"{name} holds {len(data):,} bytes, more than the {limit:,} that the network its configuration plans" in message


def test_the_weights_of_a_network_trained_in_channels_last_memory_fit_their_bound():
    """fp32 steps on a CPU without native bf16 train in channels-last memory; made contiguous entry by entry, the
    weights file stores DynUNet's aliased encoder entries apart (twice its parameters' bytes), which the bound must
    allow (a hippocampus package of the default network was refused by 27 kB)."""
    from napari_pgps.engine.package import SIZE_MARGIN, CONTAINER_BYTES
    from napari_pgps.models import build_network

    config = _tiny_config()
    config.model.patch_size, config.model.base_channels = (40, 56, 40), 32
    plan = plan_unet(config.model.patch_size, config.model.spacing)
    config.model.kernel_sizes, config.model.strides = plan.kernel_sizes, plan.strides
    config.model.channels = level_channels(len(plan.strides), config.model.base_channels, config.model.max_channels)
    network = build_network(config.model).to(memory_format=torch.channels_last_3d)
    data = weights_bytes(network.state_dict())
    assert len(data) > 1.5 * sum(p.numel() * 4 for p in network.parameters())  # the aliases stored apart
    assert len(data) <= planned_bytes(config.model) * SIZE_MARGIN + CONTAINER_BYTES
