"""The restricted unpickler for third-party feature pickles (tasks/_mmsa.py)."""

import os
import pickle
import struct
from collections import OrderedDict

import numpy as np
import pytest

from harness.task import TaskError
from tasks._mmsa import RefusedPickleError, load_pickle


class RunsCode:
    """Unpickling this calls os.system(command): what a hostile "feature file" can do."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_a_pickle_that_would_run_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran"
    payload = {"train": {"audio": np.zeros((2, 3, 4), np.float32), "id": RunsCode(f"touch {marker}")}}
    path = tmp_path / "aligned_50.pkl"
    path.write_bytes(pickle.dumps(payload, protocol=4))
    assert b"system" in path.read_bytes()  # the payload really references os.system
    with pytest.raises(RefusedPickleError) as err:
        load_pickle(path)
    msg = str(err.value)
    assert str(path) in msg and ".system'" in msg  # names the file and the refused global (posix.system on Linux)
    assert not marker.exists()
    assert isinstance(err.value, TaskError)


@pytest.mark.parametrize("proto", [0, 2])
def test_builtins_eval_is_refused_in_old_protocols_too(tmp_path, proto):
    class Evaluates:
        def __reduce__(self):
            return eval, ("1 + 1",)
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps([Evaluates()], protocol=proto))
    with pytest.raises(RefusedPickleError, match="eval"):
        load_pickle(path)


def test_codecs_encode_is_admitted_only_for_latin1(tmp_path):
    # Python 3 writes bytes at protocol 2 as _codecs.encode(text, 'latin1'): that loads ...
    ok = tmp_path / "ok.pkl"
    ok.write_bytes(pickle.dumps({"id": b"\xe9abc"}, protocol=2))
    assert load_pickle(ok) == {"id": b"\xe9abc"}
    # ... any other codec is refused
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R.")
    with pytest.raises(RefusedPickleError, match="rot13"):
        load_pickle(bad)


@pytest.mark.parametrize("proto", [2, 4, 5])
def test_numpy_arrays_dtypes_scalars_and_containers_load(tmp_path, proto):
    obj = {"train": {"text": np.arange(24, dtype=np.float64).reshape(2, 3, 4),
                     "id": np.array(["a$_$1", "b$_$2"], dtype=object),
                     "u": np.array(["x", "yz"]), "s": np.array([b"ab", b"c"]), "n": np.float64(1.5),
                     "lengths": np.array([3, 1], np.int64)},
           "meta": ([1, 2], {3}, frozenset([4]), bytearray(b"x"), 1 + 2j, OrderedDict(a=1))}
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=proto))
    got = load_pickle(path)
    for k, v in obj["train"].items():
        np.testing.assert_array_equal(got["train"][k], v)
        assert np.asarray(got["train"][k]).dtype == np.asarray(v).dtype
    assert got["meta"] == obj["meta"]


def test_truncated_file_names_the_file(tmp_path):
    path = tmp_path / "cut.pkl"
    path.write_bytes(pickle.dumps({"a": np.zeros(100)}, protocol=4)[:60])
    with pytest.raises(TaskError, match="cut.pkl"):
        load_pickle(path)


# --- Python-2 pickles (docs/datasets.md#general): numpy buffers as BINSTRING (a py2 `str`) --------------

def _binstring(b: bytes) -> bytes:
    return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<i", len(b)) + b)


def _int(i: int) -> bytes:
    return b"K" + bytes([i]) if 0 <= i < 256 else b"J" + struct.pack("<i", i)


def py2_dumps(obj) -> bytes:
    """What Python 2's cPickle.dumps(obj, 2) writes for dicts of str and numeric/bytes numpy arrays."""
    def enc(o) -> bytes:
        if isinstance(o, dict):
            return b"}(" + b"".join(enc(k) + enc(v) for k, v in o.items()) + b"u"  # EMPTY_DICT MARK ... SETITEMS
        if isinstance(o, str):
            return _binstring(o.encode("latin1"))
        if isinstance(o, np.ndarray):
            dt = o.dtype
            order = "|" if dt.itemsize == 1 or dt.kind == "S" else "<"
            size, align = (dt.itemsize, 1) if dt.kind == "S" else (-1, -1)  # flexible types carry their size
            dtype = (b"cnumpy\ndtype\n" + _binstring(dt.str[1:].encode()) + _int(0) + _int(1) + b"\x87R"
                     + b"(" + _int(3) + _binstring(order.encode()) + b"NNN" + _int(size) + _int(align) + _int(0)
                     + b"tb")
            shape = b"(" + b"".join(_int(s) for s in o.shape) + b"t"
            return (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + _int(0) + b"\x85"
                    + _binstring(b"b") + b"\x87R" + b"(" + _int(1) + shape + dtype + b"\x89"
                    + _binstring(np.ascontiguousarray(o).tobytes()) + b"tb")
        raise TypeError(type(o))
    return b"\x80\x02" + enc(obj) + b"."


def test_python2_binstring_numpy_pickle_needs_latin1_and_loads(tmp_path):
    arr = np.linspace(-3, 3, 80, dtype=np.float32).reshape(4, 20)
    arr[0, 0] = 1.5  # 1.5f = 00 00 c0 3f: non-ASCII bytes
    data = py2_dumps({"train": {"audio": arr, "id": np.array([b"Ses01F_impro01_F000", b"x"])}})
    assert b"T" + struct.pack("<i", arr.nbytes) + arr.tobytes() in data  # the buffer is a BINSTRING
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(data)  # Python 3's default ASCII decoding of py2 str fails
    path = tmp_path / "py2.pkl"
    path.write_bytes(data)
    got = load_pickle(path)
    np.testing.assert_array_equal(got["train"]["audio"], arr)
    assert got["train"]["audio"].dtype == np.float32
    np.testing.assert_array_equal(got["train"]["id"], [b"Ses01F_impro01_F000", b"x"])
    # a trivial check: a 2-byte py2 str with bytes >= 0x80
    assert pickle.loads(b"\x80\x02U\x02\xe9\xe8q\x00.", encoding="latin1") == "\xe9\xe8"
