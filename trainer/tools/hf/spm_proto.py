"""The parts of a SentencePiece ``.model`` file that a Hugging Face fast tokenizer needs, read
straight from its protobuf bytes.

The ``sentencepiece`` wheel's generated ``sentencepiece_model_pb2`` refuses to load under the
protobuf runtime that apache-beam pins (a gencode/runtime version check), and the processor API
does not expose the normaliser's precompiled character map or the trainer settings. The wire
format is small and stable, so the few fields used here are decoded directly (field numbers
from sentencepiece's ``sentencepiece_model.proto``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

# SentencePiece.Type
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# TrainerSpec.ModelType
UNIGRAM, BPE = 1, 2


@dataclass
class Piece:
    piece: str
    score: float = 0.0
    type: int = NORMAL


@dataclass
class SpmModel:
    """What a fast tokenizer must reproduce; defaults are the .proto's."""

    pieces: list[Piece] = field(default_factory=list)
    model_type: int = UNIGRAM
    byte_fallback: bool = False
    treat_whitespace_as_suffix: bool = False
    normalizer_name: str = ""
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes):
    """(field number, wire type, value) of one message; value is an int, bytes or float."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i:i + size], i + size
        elif wire == 5:
            value, i = struct.unpack("<f", buf[i:i + 4])[0], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} (field {number})")
        yield number, wire, value


def parse_spm(data: bytes) -> SpmModel:
    """Decode ModelProto fields 1 (pieces), 2 (trainer_spec) and 3 (normalizer_spec)."""
    m = SpmModel()
    for number, _, value in _fields(data):
        if number == 1:
            p = Piece("")
            for n, _, v in _fields(value):
                if n == 1:
                    p.piece = v.decode("utf-8")
                elif n == 2:
                    p.score = v
                elif n == 3:
                    p.type = v
            m.pieces.append(p)
        elif number == 2:
            for n, _, v in _fields(value):
                if n == 3:
                    m.model_type = v
                elif n == 24:
                    m.treat_whitespace_as_suffix = bool(v)
                elif n == 35:
                    m.byte_fallback = bool(v)
        elif number == 3:
            for n, _, v in _fields(value):
                if n == 1:
                    m.normalizer_name = v.decode("utf-8")
                elif n == 2:
                    m.precompiled_charsmap = bytes(v)
                elif n == 3:
                    m.add_dummy_prefix = bool(v)
                elif n == 4:
                    m.remove_extra_whitespaces = bool(v)
                elif n == 5:
                    m.escape_whitespaces = bool(v)
    return m
