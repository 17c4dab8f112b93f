"""Tests of lowrank_pool.io's public names, one class each: save_factors and load_factors (and FactorFileError)."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
from cases.errors import ERRORS
from cases.factorized import _edit_member, _Evil, _forms, _heads
from cases.io import _bomb, _special_files
from contracts import NamedErrorsContract
from helpers import expect_errors

import lowrank_pool as lp
from lowrank_pool.testing import assert_close


class TestLoadFactors(NamedErrorsContract):
    """lowrank_pool.load_factors and FactorFileError."""

    bad_calls = tuple(ERRORS["load_factors"])

    def test_factor_files_are_checked_before_anything_is_allocated(self, tmp_path):
        """Headers are read first: a file that declares more than it holds, or holds what no form has, is refused."""
        import resource
        import zipfile

        tags = {"__format__": np.array("lowrank_pool.factors"), "__version__": np.array(1), "kind": np.array("dense")}
        good = tmp_path / "good.npz"
        np.savez(good, **tags, W=np.ones((1, 2, 2)))
        # a 1 KB file whose W declares (20000, 20000, 20000) float64
        liar = _edit_member(good, tmp_path / "liar.npz", "W.npy", b"(1, 2, 2)", b"(20000, 20000, 20000)")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with pytest.raises(lp.FactorFileError, match=r"declares shape \(20000, 20000, 20000\)"):
            lp.load_factors(liar)
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB: nothing allocated
        # an extra member, a tag that inflates to 1 MiB, a deflated data member that lies about its size
        extra = tmp_path / "extra.npz"
        np.savez(extra, **tags, W=np.ones((1, 2, 2)), payload=np.ones(3))
        with pytest.raises(lp.FactorFileError, match=r"unexpected members \['payload'\]"):
            lp.load_factors(extra)
        bomb = tmp_path / "bomb.npz"
        with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.writestr("__format__.npy", b"\x93NUMPY" + b"\0" * 2**20)
        with pytest.raises(lp.FactorFileError, match=r"would expand to 1048\d+ bytes from a \d+-byte file"):
            lp.load_factors(bomb)
        # a tag whose header declares a billion elements in a few bytes
        big_tag = _edit_member(
            good, tmp_path / "big_tag.npz", "__version__.npy", b"'shape': ()", b"'shape': (1000000000,)"
        )
        with pytest.raises(lp.FactorFileError, match=r"tag '__version__' has shape \(1000000000,\)"):
            lp.load_factors(big_tag)
        # file objects, both ways
        import io

        buf = io.BytesIO()
        lp.save_factors(buf, lp.RankP(np.ones((3, 2, 1)), np.ones((3, 1))))
        buf.seek(0)
        assert isinstance(lp.load_factors(buf), lp.RankP)

    def test_inconsistent_factor_files_are_refused(self, tmp_path):
        tags = {"__format__": np.array("lowrank_pool.factors"), "__version__": np.array(1)}
        bad = {
            "eig_shapes": {"kind": np.array("eig"), "eigenvalues": np.ones((3, 2)), "eigenvectors": np.ones((4, 3, 1))},
            "non_square": {"kind": np.array("dense"), "W": np.ones((2, 3, 4))},
            "int_dtype": {"kind": np.array("dense"), "W": np.ones((2, 3, 3), int)},
            "complex": {"kind": np.array("dense"), "W": np.ones((2, 3, 3), complex)},
            "cp_f": {
                "kind": np.array("cp"),
                "factor_0": np.ones((3, 2)),
                "factor_1": np.ones((4, 2)),
                "factor_2": np.ones((5, 2)),
            },
            "unknown": {"kind": np.array("magic")},
        }
        for name, arrays in bad.items():
            np.savez(tmp_path / name, **tags, **arrays)
            with pytest.raises(lp.FactorFileError, match=name):
                lp.load_factors(tmp_path / name)
        for version in (np.array("abc"), np.array(True), np.array(1.7)):
            np.savez(tmp_path / "v", **{**tags, "__version__": version}, kind=np.array("dense"), W=np.ones((1, 2, 2)))
            with pytest.raises(lp.FactorFileError, match="format version"):
                lp.load_factors(tmp_path / "v")

    def test_foreign_and_corrupt_files_are_refused(self, tmp_path, capsys):
        def path(name, **arrays):
            out = tmp_path / name
            np.savez(out, **arrays)
            return out

        tag = {"__format__": np.array("lowrank_pool.factors"), "__version__": np.array(1)}
        pkl = tmp_path / "evil.npz"
        pkl.write_bytes(pickle.dumps(_Evil()))
        good = tmp_path / "good.npz"
        lp.save_factors(good, lp.eig_approx(np.eye(3)[None], 1))
        cut = tmp_path / "cut.npz"
        cut.write_bytes(good.read_bytes()[:100])
        obj = path("obj.npz", **tag, kind=np.array("dense"), W=np.array([{"a": 1}], dtype=object))
        foreign = path("foreign.npz", x=np.ones(3))
        newer = path("newer.npz", **{**tag, "__version__": np.array(99)}, kind=np.array("eig"))
        missing = path("missing.npz", **tag, kind=np.array("cp"))
        error = lp.FactorFileError
        expect_errors(
            [
                (lambda: lp.load_factors(pkl), error, r"evil\.npz: not a readable lowrank_pool factor file"),
                (lambda: lp.load_factors(obj), error, "array 'W' has dtype object, expected a real floating dtype"),
                (lambda: lp.load_factors(foreign), error, r"no 'lowrank_pool\.factors' tag"),
                (lambda: lp.load_factors(newer), error, "format version 99, this lowrank_pool reads 1"),
                (lambda: lp.load_factors(cut), error, r"cut\.npz"),
                (lambda: lp.load_factors(missing), error, "cp factor file is incomplete"),
                (lambda: lp.save_factors(tmp_path / "x.npz", "W"), TypeError, r"obj: expected a lowrank_pool\.nn head"),
            ]
        )
        assert "pwned" not in capsys.readouterr().out  # the pickle was never loaded

    def test_load_factors_never_opens_a_special_file(self, tmp_path):
        """Devices, FIFOs, sockets, directories and links to them are refused before they are opened: a call returns at
        once (a FIFO would block the open forever, /dev/zero would read without end)."""
        import signal

        files = _special_files(tmp_path)
        sock = files.pop("_socket")

        def hung(*_: Any) -> None:
            raise TimeoutError("load_factors blocked")

        previous = signal.signal(signal.SIGALRM, hung)
        try:
            for path in files.values():
                signal.alarm(5)
                with pytest.raises(lp.FactorFileError, match="expected a regular file"):
                    lp.load_factors(path)
                signal.alarm(0)
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
            sock.close()
        # a directory beside the file save_factors wrote: the file is found
        form = np.ones((1, 2, 2))
        lp.save_factors(tmp_path / "head", form)
        (tmp_path / "head").mkdir()
        assert_close(lp.load_factors(tmp_path / "head"), form, terms=0)

    @pytest.mark.parametrize(
        "members",
        [
            {"W": ((1, 1024, 1024), 1)},  # one deflated member of 8 MiB from a few KiB
            {"W": ((1, 64, 64), 40)},  # many members (the extra ones unexpected), 32 KiB each
            {"W": ((512, 512, 512), 0)},  # a header alone declaring 1 GiB (its member absent)
        ],
    )
    def test_load_factors_bounds_what_it_allocates(self, tmp_path, members):
        """A generated zip bomb is refused before it is decompressed, without the memory it would take; the bound is
        MAX_EXPANSION × the file's size (factor files are stored uncompressed)."""
        import resource

        from lowrank_pool import io as lio

        path = tmp_path / "bomb.npz"
        _bomb(path, members)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with pytest.raises(lp.FactorFileError) as err:
            lp.load_factors(path)
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB
        message = str(err.value)
        assert "would expand" in message or "unexpected members" in message or "missing members" in message, message
        # a legitimate file is far inside the bound: np.savez stores members uncompressed
        lp.save_factors(tmp_path / "fine", np.ones((4, 64, 64)))
        size = (tmp_path / "fine.npz").stat().st_size
        assert lio.MAX_EXPANSION * size > 4 * 64 * 64 * 8


class TestSaveFactors(NamedErrorsContract):
    """lowrank_pool.save_factors."""

    bad_calls = tuple(ERRORS["save_factors"])

    def test_factor_files_round_trip(self, tmp_path):
        rng = np.random.default_rng(0)
        for i, form in enumerate(_forms(rng)):
            path = tmp_path / f"f{i}.npz"
            lp.save_factors(path, form)
            back = lp.load_factors(path)
            assert type(back).__name__ == type(form).__name__
            assert np.array_equal(lp.to_dense(back) if i < 4 else back, lp.to_dense(form) if i < 4 else form)

    def test_torch_factors_are_saved(self):
        torch = pytest.importorskip("torch")
        import tempfile

        eig = lp.eig_approx(torch.randn(2, 4, 4), 2)
        with tempfile.TemporaryDirectory() as d:
            lp.save_factors(f"{d}/t.npz", eig)
            back = lp.load_factors(f"{d}/t.npz")
        assert_close(back.eigenvalues, eig.eigenvalues.numpy(), terms=0)  # saved as numpy, exactly

    @pytest.mark.parametrize("index", range(10))
    @pytest.mark.parametrize("what", ["head", "factors", "file object"])
    def test_heads_are_saved_with_everything_that_sets_their_scores(self, tmp_path, index, what):
        """save_factors(head) stores the form, bias, projection and options; from_factors(load_factors(...)) scores
        exactly as the head did (trained parameters: perturbed from their initial values)."""
        import io

        torch = pytest.importorskip("torch")
        head = _heads(torch)[index]
        with torch.no_grad():
            for p in head.parameters():
                p.add_(0.1 * torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(1)))
        obj = head.factors() if what == "factors" else head
        if what == "file object":
            target = io.BytesIO()
            lp.save_factors(target, obj)
            target.seek(0)
            back = lp.load_factors(target)
        else:
            back = lp.load_factors(lp.save_factors(tmp_path / "head", obj))
        assert isinstance(back, lp.HeadForm) and all(
            isinstance(a, np.ndarray) for a in (back.bias, back.projection) if a is not None
        )
        saved = head.factors()
        assert (back.bias is None) == (saved.bias is None) and (back.projection is None) == (saved.projection is None)
        assert (back.normalize, back.attention, back.reduce) == (saved.normalize, saved.attention, saved.reduce)
        assert (back.eps, back.num_iters) == (saved.eps, saved.num_iters)
        x = torch.randn(4, 6, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        rebuilt = type(head).from_factors(back, dtype=torch.float64)
        assert torch.equal(rebuilt(x), head(x))
        # and the numpy arrays of the file score like the head on numpy input (another library's rounding)
        want = lp.head_scores(x, saved).detach().numpy()
        assert_close(lp.head_scores(x.numpy(), back), want, terms=400, scale=np.abs(want).max() + 1)

    def test_heads_without_a_factor_form_and_bad_head_files_are_refused(self, tmp_path):
        torch = pytest.importorskip("torch")
        from lowrank_pool import nn

        eig = lp.eig_approx(np.eye(3)[None].repeat(2, axis=0), 2)
        save = lp.save_factors
        expect_errors(
            [
                (
                    lambda: save(tmp_path / "c", nn.CompactBilinearPool(6, 3, dim=32)),
                    lp.ArgumentTypeError,
                    r"^CompactBilinearPool: .* it has no factor form",
                ),
                (
                    lambda: save(tmp_path / "b", lp.HeadForm(eig, bias=np.zeros(3))),
                    lp.ShapeError,
                    r"^obj: bias: expected shape \(K,\) with K = 2, got \(3,\)",
                ),
                (
                    lambda: save(tmp_path / "n", lp.HeadForm(eig, normalize="signed_sqrt")),
                    lp.ArgumentError,
                    r"^obj: normalize: only a dense W is normalised",
                ),
                (
                    lambda: save(tmp_path / "i", lp.HeadForm(np.zeros((2, 3, 3)), num_iters=0)),
                    lp.ArgumentError,
                    "^obj: num_iters",
                ),
            ]
        )
        del torch

        # files written by hand: head fields in a version-1 file, a version-2 file without them, a bias that
        # does not fit, an unknown attention, bare first-order weights
        good = {"eigenvalues": np.ones((2, 2)), "eigenvectors": np.ones((3, 2, 2))}
        tags = {"__format__": np.array("lowrank_pool.factors"), "kind": np.array("eig")}
        head = {
            "head": np.array(True),
            "normalize": np.array(""),
            "attention": np.array("linear"),
            "reduce": np.array("mean"),
            "eps": np.array(1e-6),
            "num_iters": np.array(5),
        }
        cases = {
            "v1 with head": ({**tags, "__version__": np.array(1), **head}, good, "head fields"),
            "v2 bare": ({**tags, "__version__": np.array(2)}, good, "head fields"),
            "bias": ({**tags, "__version__": np.array(2), **head}, {**good, "head_bias": np.ones(3)}, "bias"),
            "attention": (
                {**tags, "__version__": np.array(2), **head, "attention": np.array("tanh")},
                good,
                "attention",
            ),
            "eps": ({**tags, "__version__": np.array(2), **head, "eps": np.array("x")}, good, "eps"),
            "first order": (
                {**tags, "kind": np.array("first_order"), "__version__": np.array(1)},
                {"weights": np.ones((3, 2))},
                "first-order weights are saved as a head only",
            ),
        }
        for name, (t, arrays, pattern) in cases.items():
            path = tmp_path / f"{name}.npz"
            np.savez(path, **t, **arrays)
            with pytest.raises(lp.FactorFileError, match=pattern):
                lp.load_factors(path)

    def test_save_factors_is_atomic(self, tmp_path, monkeypatch):
        """A reader never sees half a file: loads running beside repeated saves of two different forms all succeed and
        return one of them. A save that fails midway leaves the previous file and no temporary file."""
        import threading

        path = tmp_path / "head.npz"
        forms = [np.full((2, 16, 16), 1.0), np.full((2, 16, 16), 2.0)]
        lp.save_factors(path, forms[0])
        stop = threading.Event()

        def writer() -> None:
            k = 0
            while not stop.is_set():
                lp.save_factors(path, forms[k % 2])
                k += 1

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            for _ in range(300):
                value = float(lp.load_factors(path)[0, 0, 0])
                assert value in (1.0, 2.0)
        finally:
            stop.set()
            thread.join()

        def crash(*_: Any, **__: Any) -> None:
            raise OSError("disk full")

        before = path.read_bytes()
        monkeypatch.setattr(np, "savez", crash)
        with pytest.raises(OSError, match="disk full"):
            lp.save_factors(path, forms[1])
        assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["head.npz"]

    def test_save_factors_refuses_what_load_factors_would(self, tmp_path):
        """Every form save_factors writes, load_factors reads back; what load would refuse (a W that is not (K, f, f), a
        zero size, a form whose shapes do not fit) is refused before anything is written."""
        bad = {
            "W not square": np.zeros((2, 3, 4)),
            "W zero classes": np.zeros((0, 3, 3)),
            "W zero channels": np.zeros((2, 0, 0)),
            "W 2-D": np.zeros((3, 3)),
            "rank-P mismatch": lp.RankP(np.ones((3, 2, 2)), np.ones((4, 2))),
        }
        for name, form in bad.items():
            with pytest.raises(lp.LowRankPoolError, match=r"^(obj|A|B|W): "):  # (the form, or the part that is wrong)
                lp.save_factors(tmp_path / "x", form)
            assert not (tmp_path / "x.npz").exists(), name

    def test_file_arguments_are_checked(self, tmp_path):
        """Paths with a NUL, empty paths, read-only, text-mode and closed file objects: the package's error naming
        path."""
        import io

        form = np.ones((1, 2, 2))
        (tmp_path / "ro.bin").write_bytes(b"")
        lp.save_factors(tmp_path / "ok", form)
        with open(tmp_path / "ro.bin", "rb") as read_only, open(tmp_path / "t.txt", "w") as text:
            cases = [
                lambda: lp.save_factors("a\0b", form),
                lambda: lp.load_factors("a\0b"),
                lambda: lp.save_factors("", form),
                lambda: lp.load_factors(""),
                lambda: lp.save_factors(read_only, form),
                lambda: lp.save_factors(text, form),
                lambda: lp.load_factors(text),
            ]
            closed = io.BytesIO()
            closed.close()
            cases.append(lambda: lp.save_factors(closed, form))
            for case in cases:
                try:
                    case()
                except lp.LowRankPoolError as err:
                    assert str(err).startswith("path: ") or "regular file" in str(err), str(err)
        target = tmp_path / "out.npz"
        target.mkdir()
        with pytest.raises(lp.ArgumentError, match=r"^path: .* is a directory"):
            lp.save_factors(target, form)
