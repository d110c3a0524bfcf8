"""Checkpoint formats: safetensors (header, reader, encoding), torch.save files read with a restricted
unpickler, DCP directories, DeepSpeed ZeRO folders, folders of shards and their index. Modules here are
private; the rest of reinit imports these names. Loaded lazily: a name loads only its own module, so a
safetensors file is read without importing torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from reinit.lazy import lazy_exports

if TYPE_CHECKING:
    from reinit.io.formats._dcp_metadata import DCP_RECORD_NAME, is_dcp_dir, is_dcp_file
    from reinit.io.formats._dcp_reader import DcpCheckpoint
    from reinit.io.formats._dcp_writer import DcpBox, DcpWriter
    from reinit.io.formats._directory import DirectoryCheckpoint, LocalFiles, holds_weights
    from reinit.io.formats._safetensors_format import (
        MAX_TENSORS,
        Header,
        build_header,
        dtype_name,
        dtype_size,
        float_max,
        is_float_name,
        name_size,
        read_header,
        tensor_to_bytes,
        torch_dtype,
    )
    from reinit.io.formats._safetensors_header import (
        CODE_NAMES,
        NAME_CODES,
        DuplicateKey,
        TensorInfo,
        no_duplicate_keys,
    )
    from reinit.io.formats._safetensors_reader import (
        SAFETENSORS_SUFFIXES,
        SafetensorsFile,
        pread_into,
    )
    from reinit.io.formats._shardindex import check_shard, read_index
    from reinit.io.formats._torch_reader import TORCH_SUFFIXES, TorchFile
    from reinit.io.formats._zero_layout import zero_tag_dir
    from reinit.io.formats._zero_reader import ZeroCheckpoint

_WHERE = {
    "CODE_NAMES": "_safetensors_header",
    "DcpCheckpoint": "_dcp_reader",
    "DcpBox": "_dcp_writer",
    "DcpWriter": "_dcp_writer",
    "DirectoryCheckpoint": "_directory",
    "DuplicateKey": "_safetensors_header",
    "Header": "_safetensors_format",
    "LocalFiles": "_directory",
    "MAX_TENSORS": "_safetensors_format",
    "NAME_CODES": "_safetensors_header",
    "SAFETENSORS_SUFFIXES": "_safetensors_reader",
    "SafetensorsFile": "_safetensors_reader",
    "TORCH_SUFFIXES": "_torch_reader",
    "TensorInfo": "_safetensors_header",
    "TorchFile": "_torch_reader",
    "ZeroCheckpoint": "_zero_reader",
    "build_header": "_safetensors_format",
    "check_shard": "_shardindex",
    "dtype_name": "_safetensors_format",
    "dtype_size": "_safetensors_format",
    "holds_weights": "_directory",
    "is_dcp_dir": "_dcp_metadata",
    "float_max": "_safetensors_format",
    "is_float_name": "_safetensors_format",
    "name_size": "_safetensors_format",
    "is_dcp_file": "_dcp_metadata",
    "DCP_RECORD_NAME": "_dcp_metadata",
    "no_duplicate_keys": "_safetensors_header",
    "pread_into": "_safetensors_reader",
    "read_header": "_safetensors_format",
    "read_index": "_shardindex",
    "tensor_to_bytes": "_safetensors_format",
    "torch_dtype": "_safetensors_format",
    "zero_tag_dir": "_zero_layout",
}

__all__ = [
    "CODE_NAMES",
    "DcpCheckpoint",
    "DcpBox",
    "DcpWriter",
    "DirectoryCheckpoint",
    "DuplicateKey",
    "Header",
    "LocalFiles",
    "MAX_TENSORS",
    "NAME_CODES",
    "SAFETENSORS_SUFFIXES",
    "SafetensorsFile",
    "TORCH_SUFFIXES",
    "TensorInfo",
    "TorchFile",
    "ZeroCheckpoint",
    "build_header",
    "check_shard",
    "dtype_name",
    "dtype_size",
    "holds_weights",
    "is_dcp_dir",
    "is_dcp_file",
    "DCP_RECORD_NAME",
    "float_max",
    "is_float_name",
    "name_size",
    "no_duplicate_keys",
    "pread_into",
    "read_header",
    "read_index",
    "tensor_to_bytes",
    "torch_dtype",
    "zero_tag_dir",
]


__getattr__, __dir__ = lazy_exports(__name__, _WHERE, globals())
