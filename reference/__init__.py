"""Dense NumPy float64 reference of the CAPO last-layer model: obviously correct, slow.

Every quantity here is the twin of a fast function in :mod:`capo`. Full (K·d)×(K·d) matrices are built
with the paper's Kronecker convention: ψ = vec(W) in row-major order, so index ``a * d + j`` is W[a, j].
"""
