"""Operations endpoints: /health and /metrics."""
