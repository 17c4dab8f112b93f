"""What every pooling layer shares: the constructor preamble, the bias, the init rule.

The conventions (the same for every head, and the same as the functions'; the reasons are in
docs/conventions.md):

- scale: second-order scores use M = XᵀX / n (first-order heads the mean feature);
- bias: ``bias=True`` by default, one learnable offset per class, initialised to 0;
- dtype: float32/float64 mixed promote like torch; float16/bfloat16 compute and return
  float32 (the functions' rule: Gram-like sums overflow float16);
- layout: ``channel_axis=None`` reads 3-D input as (B, n, f) and 4-D/5-D input as
  (B, f, H, W) / (B, f, T, H, W); an int overrides it;
- init: parameters are drawn so that the initial scores are O(1) (std ≈ 0.05-1) on
  features of unit scale such as ReLU outputs of a normalised backbone; the documented
  rule per head is in the docs' math page ("Scale and initialisation").
"""

from __future__ import annotations

import math
import os
from typing import Any, ClassVar

import torch
from torch import nn

import lowrank_pool as lp
from lowrank_pool.validation import check_choice, check_flag, check_number, check_positive_int


class PoolingHead(nn.Module):
    """Base of the layers: input/output sizes, the bias, the layout rule and the init helpers.

    Every head maps a feature map to class scores (B, K) with the conventions of
    :doc:`/conventions`: the second moment M = XᵀX / n, a bias on by default (zero at
    init), the functions' dtype and ``channel_axis`` rules, O(1) initial scores.

    Parameters
    ----------
    in_channels : int
        f, the feature map's channel count.
    num_classes : int
        K.
    bias : bool, default True
        Learn a per-class bias (zero at init).
    channel_axis : int, optional
        The channel axis of the input; None applies the default rule (3-D: (B, n, f);
        4-D/5-D: channels-first).
    device, dtype
        Where and in which floating dtype the parameters are created.

    Examples
    --------
    >>> import torch
    >>> from lowrank_pool.nn import CPPool, PoolingHead
    >>> head = CPPool(8, 5, rank=4)
    >>> isinstance(head, PoolingHead), head.in_channels, head.num_classes, head.bias.shape
    (True, 8, 5, torch.Size([5]))
    """

    in_channels: int
    num_classes: int
    bias: nn.Parameter | None
    channel_axis: int | None

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        bias: bool = True,
        channel_axis: int | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.num_classes = check_positive_int(num_classes, "num_classes")
        if channel_axis is not None and (isinstance(channel_axis, bool) or not isinstance(channel_axis, int)):
            raise lp.ArgumentTypeError(f"channel_axis: expected an int or None, got {type(channel_axis).__name__}")
        self.channel_axis = channel_axis
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise lp.DTypeError(f"dtype: expected a floating torch.dtype, got {dtype!r}")
        self.factory = {"device": _check_device(device), "dtype": dtype}
        if check_flag(bias, "bias"):
            self._reserve(bias=(self.num_classes,))
            self.bias: nn.Parameter | None = nn.Parameter(torch.empty(self.num_classes, **self.factory))
        else:
            self.bias = None

    #: The factor form the head holds, and that :meth:`from_factors` builds it from: ``"dense"``, ``"cp"``,
    #: ``"tucker"``, ``"eig"``, ``"rankp"``, ``"first_order"``; None where its scores have no factor form.
    form_kind: ClassVar[str | None] = None

    def factors(self) -> lp.HeadForm:
        """The function this head computes, as a value: ``lp.head_scores(x, head.factors(),
        channel_axis=head.channel_axis)`` equals ``head(x)`` (its live parameters: gradients flow).

        Returns
        -------
        lowrank_pool.HeadForm
            The factor form of the weights, with the bias and the head's projection, normalisation,
            attention or reduction. A head whose scores have no factor form raises ArgumentTypeError.

        Examples
        --------
        >>> import torch, lowrank_pool as lp
        >>> from lowrank_pool.nn import EigPool
        >>> head, x = EigPool(6, 3, rank=2), torch.randn(2, 6, 4, 4)
        >>> torch.allclose(lp.head_scores(x, head.factors()), head(x))
        True
        """
        raise lp.ArgumentTypeError(f"{type(self).__name__}: its scores have no factor form")

    def to_dense(self) -> torch.Tensor:
        """W (K, f, f) of this head's bilinear form ⟨M, W_k⟩ (:func:`lowrank_pool.to_dense` of :meth:`factors`).

        Returns
        -------
        torch.Tensor
            W on the input's f channels (a 1×1 reduction folded in), differentiable in the parameters.
            Heads whose score is not linear in M = XᵀX / n raise, saying why.

        Examples
        --------
        >>> import torch
        >>> from lowrank_pool.nn import CPPool
        >>> CPPool(6, 3, rank=2).to_dense().shape
        torch.Size([3, 6, 6])
        """
        return lp.to_dense(self.factors())

    @classmethod
    def from_factors(cls, form: Any, /, **kwargs: Any) -> Any:
        """A head of this class that computes ``form``'s scores: a :class:`lowrank_pool.HeadForm` (what
        :meth:`factors` and :func:`lowrank_pool.load_factors` return) or a bare form.

        The form is converted exactly into the class's own (:func:`lowrank_pool.convert_form`: any form of W
        into CP, Tucker, eigen, rank-P or dense; a projection folded into the channel factors, or kept as the
        1×1 reduction of a :class:`BilinearPool`); the bias is copied. ``kwargs`` go to the constructor
        (``path``, ``channel_axis``, ``dtype``, ``device``, ...).

        Parameters
        ----------
        form : HeadForm or W (K, f, f), CPTensor, TuckerTensor, EigTensor, RankP
        **kwargs
            Constructor options.

        Returns
        -------
        PoolingHead
            Of this class.

        Examples
        --------
        >>> import torch, lowrank_pool as lp
        >>> from lowrank_pool.nn import CPPool, EigPool
        >>> eig = EigPool(4, 2, rank=4, dtype=torch.float64)
        >>> cp = CPPool.from_factors(eig.factors())           # exact: rank K·P
        >>> x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
        >>> torch.allclose(cp(x), eig(x))
        True
        """
        if cls.form_kind is None:
            raise lp.ArgumentTypeError(f"{cls.__name__}: built by its constructor, not from factors")
        head = form if isinstance(form, lp.HeadForm) else lp.HeadForm(form)
        _check_convertible(head, cls)
        layer = cls._from_form(head, kwargs)
        if head.bias is not None and layer.bias is not None:
            with torch.no_grad():
                layer.bias.copy_(torch.as_tensor(head.bias))
        return layer

    @classmethod
    def _from_form(cls, head: lp.HeadForm, kwargs: dict[str, Any]) -> Any:  # pragma: no cover - per class
        raise NotImplementedError

    @classmethod
    def from_dense(cls, W: Any, rank: Any = None, *, fit: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        """A head of this class fitted to W (K, f, f) or to a trained head, at ``rank``
        (:func:`lowrank_pool.approx_form`: the CP, Tucker, eigen or rank-P form; options of the fit in ``fit``).

        From a head (anything with :meth:`factors` whose form has a W), its bias, channel_axis and 1×1
        reduction carry over, so at full rank the new head reproduces its scores. ``kwargs`` go to the layer.

        Parameters
        ----------
        W : torch.Tensor (K, f, f) or a pooling head
        rank : int (or Tucker's ranks)
            Ignored by the dense head.
        fit : dict, optional
            Options of :func:`lowrank_pool.cp_approx` / :func:`lowrank_pool.tucker_approx`.
        **kwargs
            Constructor options.

        Returns
        -------
        PoolingHead
            Of this class.

        Examples
        --------
        >>> import torch
        >>> from lowrank_pool.nn import BilinearPool, EigPool
        >>> dense = BilinearPool(6, 3, normalize=None, dtype=torch.float64)
        >>> eig = EigPool.from_dense(dense, rank=6)            # full rank: the same scores
        >>> x = torch.randn(2, 6, 4, 4, dtype=torch.float64)
        >>> torch.allclose(eig(x), dense(x))
        True
        """
        if cls.form_kind is None or cls.form_kind == "first_order":
            raise lp.ArgumentTypeError(f"{cls.__name__}: has no form of W to fit")
        source, opts = _source(W)
        if source.normalize is not None:
            raise lp.ArgumentError(
                f"W: a head with normalize={source.normalize!r} has no factorised equivalent (its score is not "
                "linear in M = XᵀX/n); train it with normalize=None to convert it exactly, or pass its weight to "
                "approximate W alone"
            )
        w = lp.to_dense(lp.HeadForm(source.form, attention=source.attention))
        fitted = lp.approx_form(w.detach(), rank, kind=cls.form_kind, **(fit or {}))
        head = lp.HeadForm(fitted, bias=source.bias, projection=source.projection)
        return cls.from_factors(head, **{**opts, **kwargs})

    def _param(self, *shape: int) -> nn.Parameter:
        return nn.Parameter(torch.empty(*(int(d) for d in shape), **self.factory))

    def _reserve(self, **shapes: tuple[int, ...]) -> None:
        """Refuse, before allocating anything, parameters that cannot fit in the device's memory.

        ``CPPool(8, 3, rank=10**9)`` would otherwise start allocating tens of GB; the error
        states what the parameters need and what the device has.
        """
        dtype = self.factory["dtype"] or torch.get_default_dtype()
        itemsize = torch.empty((), dtype=dtype).element_size()
        need = sum(math.prod(int(d) for d in s) for s in shapes.values()) * itemsize  # (Python ints: no overflow)
        device = torch.device(self.factory["device"] or "cpu")
        have = _device_memory(device)
        if need > have:
            listed = ", ".join(f"{n} {s}" for n, s in shapes.items())
            raise lp.ArgumentError(
                f"{type(self).__name__}: its parameters ({listed}, {dtype}) need {need / 2**30:.3g} GiB, more than "
                f"the {have / 2**30:.3g} GiB of memory available on {device}"
            )

    def _reset_bias(self) -> None:
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _add_bias(self, s: torch.Tensor) -> torch.Tensor:
        return s if self.bias is None else s + self.bias

    @staticmethod
    def _check_input(x: Any) -> None:
        if not isinstance(x, torch.Tensor):
            raise lp.BackendError(f"x: expected a torch.Tensor, got {type(x).__name__}")

    @staticmethod
    def _init_(t: torch.Tensor, std: float, generator: torch.Generator | None) -> None:
        if generator is not None and not isinstance(generator, torch.Generator):
            raise lp.ArgumentTypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
        nn.init.normal_(t, 0.0, std, generator=generator)

    def _common_repr(self) -> str:
        axis = "" if self.channel_axis is None else f", channel_axis={self.channel_axis}"
        return f"bias={self.bias is not None}{axis}"


def _check_convertible(head: lp.HeadForm, cls: type) -> None:
    """Whether ``cls`` can compute the head's function: first-order weights only as first-order, a normalised W only
    as a dense head, a non-linear attention only as a rank-P head."""
    kind = cls.form_kind  # type: ignore[attr-defined]
    first = getattr(head.form, "ndim", None) == 2
    if first != (kind == "first_order"):
        what = "first-order weights (f, K)" if first else "a form of W"
        raise lp.ArgumentTypeError(f"form: {cls.__name__} cannot hold {what}")
    if head.normalize is not None and kind != "dense":
        raise lp.ArgumentError(
            f"form: scores of a normalised M (normalize={head.normalize!r}) have no {kind} form; only a dense head "
            "holds them"
        )
    if head.attention != "linear" and kind != "rankp":
        raise lp.ArgumentError(
            f"form: scores with attention={head.attention!r} have no {kind} form; only an attentional head holds them"
        )


def _source(W: Any) -> tuple[lp.HeadForm, dict[str, Any]]:
    """The HeadForm of a dense W or of a head (through its factors), detached, and the layer options it carries."""
    if isinstance(W, torch.Tensor):
        return lp.HeadForm(W.detach()), {"dtype": W.dtype, "device": W.device}
    factors = getattr(W, "factors", None)
    if not callable(factors):
        raise lp.ArgumentTypeError(
            f"W: expected a torch.Tensor (K, f, f) or a pooling head (with factors()), got {type(W).__name__}"
        )
    head = factors()
    if getattr(head.form, "ndim", None) == 2:
        raise lp.ArgumentTypeError(f"W: a {type(W).__name__} is first-order: it has no W to fit")
    detached = head._replace(
        form=_detached(head.form),
        bias=None if head.bias is None else head.bias.detach(),
        projection=None if head.projection is None else head.projection.detach(),
    )
    opts: dict[str, Any] = {"channel_axis": W.channel_axis, "bias": head.bias is not None}
    some = next(iter(W.parameters()), None)
    if some is not None:
        opts.update(dtype=some.dtype, device=some.device)
    return detached, opts


def _detached(form: Any) -> Any:
    """A form with every tensor detached (tuples, lists and named tuples kept)."""
    if isinstance(form, torch.Tensor):
        return form.detach()
    if isinstance(form, tuple | list):
        parts = [_detached(p) for p in form]
        if hasattr(form, "_fields"):
            return type(form)(*parts)
        return type(form)(parts)
    return form


def as_tensors(*arrays: Any, like: dict[str, Any]) -> list[torch.Tensor]:
    """The arrays as detached tensors in the layer's dtype and device (``like``: the constructor options)."""
    dtype, device = like.get("dtype"), like.get("device")
    return [torch.as_tensor(a).detach().to(dtype=dtype, device=device) for a in arrays]


def _check_device(device: Any) -> Any:
    """``device`` if torch can allocate there, else an ArgumentError naming it."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise lp.ArgumentError(
            f"device: expected a torch device (e.g. 'cpu', 'cuda:0'), got {device!r} ({err})"
        ) from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise lp.ArgumentError(f"device: {device!r} asks for CUDA, but torch sees no CUDA device on this machine")
    return device


def _device_memory(device: torch.device) -> float:
    """Bytes of memory a new allocation can use on ``device`` (inf where unknown, e.g. meta)."""
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        return float(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (ValueError, OSError, AttributeError):
            return math.inf
    if device.type == "cuda" and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(device)
        return float(free)
    return math.inf


class ScaledWeight:
    """A head whose ``weight`` holds W / c, with the fixed multiplier c (``weight_scale``) applied in the
    forward (the equalised learning rate of Karras et al., ICLR 2018).

    Its descriptor D (a normalised M, or a sketch of it) has a norm that grows with the channel count, and
    an optimiser that moves every entry by about its learning rate (Adam) changes a score by lr·‖D‖₁: up
    to lr·d² for an unnormalised d×d descriptor, against lr·f for a first-order head. The layer picks c so
    that a step moves scores by about lr·f for unit-scale features (and the initial ``weight`` so that
    scores start O(1)): the learning rates of the other heads work. c is rounded to a power of two, so that
    W = c · ``weight`` and ``weight`` = W / c are exact in every dtype. c is saved in the state dict as the
    int64 buffer ``weight_scale_bits`` (the float64 bits of c: exact whatever the module's dtype); a state
    dict without it (saved before this parametrization) holds W itself and is converted on loading, with
    a warning.
    """

    weight: nn.Parameter
    weight_scale_bits: torch.Tensor

    def _register_scale(self, scale: float) -> None:
        scale = 2.0 ** round(math.log2(scale))  # a power of two: W ↔ weight conversions are exact
        bits = torch.tensor(float(scale), dtype=torch.float64).view(torch.int64)
        self.register_buffer("weight_scale_bits", bits.to(self.weight.device))  # type: ignore[attr-defined]
        self._weight_scale = float(scale)

    @property
    def weight_scale(self) -> float:
        """c: the head's W is ``weight_scale · weight`` (``factors()``, ``to_dense()`` and the scores use W)."""
        return self._weight_scale

    def _classify(self, z: torch.Tensor, normalize: str | None, eps: float) -> torch.Tensor:
        """Scores c · N(z)ᵀ ``weight`` + bias of descriptors z (B, d): N the optional signed square root
        (:func:`lowrank_pool.signed_sqrt`) and l2 normalisation, the linear map
        :func:`lowrank_pool.first_order_pool` of z as a one-position map (compact bilinear, MFB, MCB,
        covariance pooling)."""
        norm = normalize or ""
        if norm.startswith("signed_sqrt"):
            z = lp.signed_sqrt(z, eps=eps)
        if norm.endswith("l2"):
            z = lp.l2_normalize(z)
        s = lp.first_order_pool(z[:, None, :], self.weight, reduce="sum", channel_axis=-1)
        return self._add_bias(s * self.weight_scale)  # type: ignore[attr-defined]

    def _descriptor_classifier(self, dim: int, num_classes: int, *, normalize: Any, eps: Any, width: float) -> None:
        """Set up the linear classifier of a descriptor of ``dim`` entries (a sketch of M, MFB's pooled
        products): ``normalize`` and ``eps`` checked, ``weight`` (dim, K), and c = width/√dim after an l2
        normalisation (a unit vector with ‖ψ‖₁ ≈ √dim: a step moves scores by about lr·width) or 1/√dim before
        one (the raw descriptor's entries grow with the width)."""
        self.normalize = check_choice(normalize, "normalize", (None, "signed_sqrt", "l2", "signed_sqrt+l2"))
        self.eps = check_number(eps, "eps")
        self._reserve(weight=(dim, num_classes))  # type: ignore[attr-defined]
        self.weight = self._param(dim, num_classes)  # type: ignore[attr-defined]  # (d, K): w / weight_scale
        l2 = self.normalize is not None and self.normalize.endswith("l2")
        self._register_scale(width / math.sqrt(dim) if l2 else 1.0 / math.sqrt(dim))

    def _reset_classifier(self, raw_std: float, generator: torch.Generator | None) -> None:
        """``weight`` for O(1) initial scores: w = c · weight ~ N(0, 1) on an l2-normalised descriptor, N(0,
        raw_std²) on the raw one; and the bias."""
        l2 = self.normalize is not None and self.normalize.endswith("l2")
        self._init_(self.weight, (1.0 if l2 else raw_std) / self.weight_scale, generator)  # type: ignore[attr-defined]
        self._reset_bias()  # type: ignore[attr-defined]

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """The state's own c (``weight_scale_bits``), or a state saved before it converted (see the class)."""
        super()._load_from_state_dict(self._load_scale(state_dict, prefix), prefix, *args)  # type: ignore[misc]

    def _load_scale(self, state_dict: dict[str, Any], prefix: str) -> dict[str, Any]:
        key = prefix + "weight_scale_bits"
        if key in state_dict:
            bits = state_dict[key]
            if not isinstance(bits, torch.Tensor) or bits.dtype != torch.int64 or bits.numel() != 1:
                raise lp.ArgumentError(f"state_dict: {key} must be a one-element int64 tensor")
            scale = float(bits.reshape(()).to("cpu").view(torch.float64))
            if not (math.isfinite(scale) and scale > 0):
                raise lp.ArgumentError(f"state_dict: {key} holds weight_scale = {scale!r}, expected a positive number")
            self._weight_scale = scale  # the state's own multiplier: its W exactly
            return state_dict
        import warnings

        warnings.warn(
            f"{type(self).__name__}: the state dict holds no weight_scale_bits (saved by an earlier lowrank_pool, "
            f"whose weight was W itself); its weight is read as W and stored as W / {self._weight_scale:.4g}",
            UserWarning,
            stacklevel=3,
        )
        out = {**state_dict, key: self.weight_scale_bits.clone()}
        if prefix + "weight" in state_dict:
            out[prefix + "weight"] = state_dict[prefix + "weight"] / self._weight_scale
        return out


def fan_std(fan_in: int) -> float:
    """1/√fan_in: a dot product with a unit-scale input keeps unit scale."""
    return 1.0 / math.sqrt(fan_in)
