"""The research and orchestration apps (`medfl demo`, `medfl infer`): they drive both sides, nothing imports them."""

__all__: list[str] = []
