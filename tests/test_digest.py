"""The Digest type: what it accepts, what it refuses, and in one line."""

import hashlib

import msgspec
import pytest

from chunked.digest import Digest, dec_hook, enc_hook, is_sha256
from chunked.errors import FormatError, InputError

HEX = hashlib.sha256(b"x").hexdigest()
GOOD = "sha256:" + HEX


def test_valid() -> None:
    d = Digest.parse(GOOD, "layer digest")
    assert d == GOOD and isinstance(d, str)
    assert d.hex == HEX
    assert d.raw == hashlib.sha256(b"x").digest()
    assert d.algorithm == "sha256"
    assert {GOOD: 1}[d] == 1 and hash(d) == hash(GOOD)


def test_constructors_agree() -> None:
    h = hashlib.sha256(b"x")
    assert Digest.of(b"x") == Digest.from_hex(HEX) == Digest.from_hash(h) == GOOD
    assert type(Digest.of(b"x")) is Digest
    with pytest.raises(ValueError):
        Digest.from_hash(hashlib.sha512(b"x"))


@pytest.mark.parametrize("bad", [
    "sha256:" + HEX.upper(),          # uppercase hex
    "SHA256:" + HEX,                  # uppercase algorithm
    GOOD[:-1],                        # short
    GOOD + "0",                       # long
    "sha512:" + hashlib.sha512(b"x").hexdigest(),  # another algorithm
    "sha256:" + "g" * 64,             # not hex
    " " + GOOD, GOOD + " ", GOOD + "\n", "sha256: " + HEX[1:],  # whitespace
    "sha256:" + "\u0661" * 64,        # digits, but not ASCII
    "", "sha256:", HEX,
    None, 7, b"sha256:" + HEX.encode(), [GOOD],  # not text
])
def test_refused_in_one_line(bad: object) -> None:
    with pytest.raises(FormatError) as exc:
        Digest.parse(bad, "layer descriptor digest")
    msg = str(exc.value)
    assert msg.startswith("layer descriptor digest is ") and "\n" not in msg
    assert "only sha256" in msg
    assert not is_sha256(bad)


def test_user_input_is_an_input_error() -> None:
    with pytest.raises(InputError):
        Digest.parse("sha256:abc", "reference digest", InputError)
    with pytest.raises(InputError):
        Digest.from_hex("ABC", "x", InputError)


def test_long_value_is_cut_short() -> None:
    with pytest.raises(FormatError) as exc:
        Digest.parse("sha256:" + "a" * 10000)
    assert len(str(exc.value)) < 200


def test_msgspec_hooks() -> None:
    class S(msgspec.Struct):
        d: Digest

    s = msgspec.json.decode(f'{{"d":"{GOOD}"}}'.encode(), type=S, dec_hook=dec_hook)
    assert type(s.d) is Digest
    with pytest.raises(msgspec.ValidationError, match=r"\$\.d"):
        msgspec.json.decode(f'{{"d":"{GOOD}\\n"}}'.encode(), type=S, dec_hook=dec_hook)
    assert msgspec.json.encode(s, enc_hook=enc_hook) == f'{{"d":"{GOOD}"}}'.encode()
