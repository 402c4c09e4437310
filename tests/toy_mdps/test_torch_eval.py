"""The torch twin (toy_mdps/torch_eval.py) against NumPy and the paper's closed forms (eqs 7-9, 66-67)."""

from __future__ import annotations

import numpy as np
import torch
from torch.func import grad, jacrev

from tests.tolerances import EXACT_ATOL, EXACT_RTOL
from toy_mdps import ToyCase, average_kl, build_case, case_by_id, surrogate_objective
from toy_mdps.torch_eval import (
    average_kl as average_kl_t,
)
from toy_mdps.torch_eval import (
    evaluate_torch,
    lastlayer_surrogate,
    objective_J,
    policy_probs,
    surrogate_L,
)


def hessian(f):
    """Reverse-over-reverse Hessian (torch.func.hessian's forward mode warns inside torch 2.13)."""
    return jacrev(jacrev(f))


def close(actual, expected) -> None:
    if isinstance(actual, torch.Tensor):
        actual = actual.detach().numpy()
    np.testing.assert_allclose(actual, expected, rtol=EXACT_RTOL, atol=EXACT_ATOL)


def options(case: ToyCase) -> dict:
    return {"setting": case.setting, "temperature": case.temperature, "top_k": case.top_k}


def W_of(case: ToyCase) -> torch.Tensor:
    return torch.tensor(case.W, dtype=torch.float64)


def perturbation(case: ToyCase, scale: float = 0.05) -> torch.Tensor:
    return scale * torch.randn(case.W.shape, dtype=torch.float64)


def test_torch_evaluation_equals_numpy(toy_case: ToyCase) -> None:
    """Probabilities, V, Q, A, d and J of the torch twin equal the NumPy DP in float64."""
    probs_t = policy_probs(toy_case.features, W_of(toy_case), toy_case.temperature, toy_case.top_k)
    close(probs_t, toy_case.probs())
    ev, ev_t = toy_case.evaluate(), evaluate_torch(toy_case.mdp, probs_t, toy_case.setting)
    for name in ("V", "Q", "A", "d", "J"):
        close(getattr(ev_t, name), getattr(ev, name))
    close(objective_J(toy_case.mdp, toy_case.features, W_of(toy_case), **options(toy_case)), ev.J)


def test_surrogate_and_kl_equal_numpy_at_a_perturbed_policy(toy_case: ToyCase) -> None:
    W, W2 = W_of(toy_case), W_of(toy_case) + perturbation(toy_case)
    ev, p, q = toy_case.evaluate(), toy_case.probs(), toy_case.probs(W2.numpy())
    mdp, h = toy_case.mdp, toy_case.features
    close(surrogate_L(mdp, h, W, W2, **options(toy_case)), surrogate_objective(ev, q))
    kl = average_kl(ev, p, q)
    assert np.isfinite(kl) and kl > 0
    close(average_kl_t(mdp, h, W, W2, **options(toy_case)), kl)


def flat_arrays(case: ToyCase) -> tuple[np.ndarray, ...]:
    flat = case.flat()
    return flat.weights, flat.features, flat.probs, flat.advantages


def test_grad_of_J_is_the_policy_gradient_theorem(toy_case: ToyCase) -> None:
    """∇_W J = Σ_{t,s} w_t(s) Σ_a π A_t (e_a − π) ⊗ h / temperature (eq 2 and eq 7, exact expectation)."""
    w, h, pi, A = flat_arrays(toy_case)
    coef = pi * A - pi * (pi * A).sum(axis=1, keepdims=True)
    expected = np.einsum("m,ma,mj->aj", w, coef, h) / toy_case.temperature
    g = grad(lambda W: objective_J(toy_case.mdp, toy_case.features, W, **options(toy_case)))
    close(g(W_of(toy_case)), expected)


def test_grad_of_surrogate_at_old_weights_equals_grad_of_J(toy_case: ToyCase) -> None:
    """∇_{W'} L_π(π_{W'}) at W' = W equals ∇J(W) (Lemma E.1 eq 67)."""
    mdp, h, W = toy_case.mdp, toy_case.features, W_of(toy_case)
    g_L = grad(lambda W2: surrogate_L(mdp, h, W, W2, **options(toy_case)))(W)
    g_J = grad(lambda W2: objective_J(mdp, h, W2, **options(toy_case)))(W)
    close(g_L, g_J.numpy())


def test_kl_is_zero_with_zero_gradient_at_the_old_weights(toy_case: ToyCase) -> None:
    mdp, h, W = toy_case.mdp, toy_case.features, W_of(toy_case)
    kl = lambda W2: average_kl_t(mdp, h, W, W2, **options(toy_case))  # noqa: E731
    close(kl(W), 0.0)
    close(grad(kl)(W), np.zeros(W.shape))


def test_hessian_of_lastlayer_surrogate_is_eq8_Htilde(toy_case: ToyCase) -> None:
    """∇²_W Σ w Σ_a π_W A_old at W_old = Σ w Σ_a π A [(e_a − π)(e_a − π)ᵀ − F] ⊗ h hᵀ / τ² (eq 8)."""
    w, h, pi, A = flat_arrays(toy_case)
    K, d = toy_case.W.shape
    expected = np.zeros((K * d, K * d))
    for wm, hm, p, a in zip(w, h, pi, A, strict=True):
        U = np.eye(K) - p  # row a is e_a − π
        C = np.einsum("a,ai,aj->ij", p * a, U, U) - (p * a).sum() * (np.diag(p) - np.outer(p, p))
        expected += wm * np.kron(C, np.outer(hm, hm))
    expected /= toy_case.temperature**2
    W = W_of(toy_case)
    f = lambda W2: lastlayer_surrogate(toy_case.mdp, toy_case.features, W, W2, **options(toy_case))  # noqa: E731
    close(hessian(f)(W).reshape(K * d, K * d), expected)


def test_hessian_of_average_kl_is_the_normalised_fisher(toy_case: ToyCase) -> None:
    """∇² D̄_KL at W_old = Σ ν(s) F(s) ⊗ h hᵀ / τ², ν the normalised state weights (eqs 6, 9)."""
    w, h, pi, _ = flat_arrays(toy_case)
    K, d = toy_case.W.shape
    nu = w / w.sum()
    expected = (
        sum(
            n * np.kron(np.diag(p) - np.outer(p, p), np.outer(x, x))
            for n, x, p in zip(nu, h, pi, strict=True)
        )
        / toy_case.temperature**2
    )
    W = W_of(toy_case)
    f = lambda W2: average_kl_t(toy_case.mdp, toy_case.features, W, W2, **options(toy_case))  # noqa: E731
    close(hessian(f)(W).reshape(K * d, K * d), expected)


def test_same_tensor_as_old_and_new_weights_differentiates_only_the_new_policy(
    toy_case: ToyCase,
) -> None:
    """Passing W as both W_old and W_new: the old policy's d and A stay constants (detached)."""
    mdp, h, W = toy_case.mdp, toy_case.features, W_of(toy_case)
    g_same = grad(lambda V: surrogate_L(mdp, h, V, V, **options(toy_case)))(W)
    g_J = grad(lambda V: objective_J(mdp, h, V, **options(toy_case)))(W)
    close(g_same, g_J.numpy())
    H_same = hessian(lambda V: lastlayer_surrogate(mdp, h, V, V, **options(toy_case)))(W)
    H_new = hessian(lambda V: lastlayer_surrogate(mdp, h, W, V, **options(toy_case)))(W)
    close(H_same, H_new.numpy())


def test_top_k_kl_is_infinite_when_the_new_support_misses_an_old_action() -> None:
    """KL(π ‖ π') = +inf at a visited state where π' gives 0 to an action of π's support."""
    case = build_case(case_by_id("random-S5-K4-T3-d4-top3"))
    mdp, h, W = case.mdp, case.features, W_of(case)
    logits = h @ case.W.T
    s = int(np.argmax(case.evaluate().d[0]))
    a = int(np.argsort(logits[s])[1])  # second smallest logit: in the top-3 support of state s
    W2 = W.clone()
    W2[a] -= 100.0 * torch.tensor(h[s]) / float(np.dot(h[s], h[s]))
    assert case.probs(W2.numpy())[s, a] == 0.0
    assert average_kl(case.evaluate(), case.probs(), case.probs(W2.numpy())) == np.inf
    assert average_kl_t(mdp, h, W, W2, **options(case)).item() == np.inf
