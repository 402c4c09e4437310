"""A CAPO run's model card and hub tags name CAPO and cite its paper; a baseline keeps TRL's GRPO card."""

from __future__ import annotations

import pytest

from tests.capo import _trainer_helpers as H


@pytest.mark.parametrize(
    ("enabled", "name", "paper"), [(True, "CAPO", "2510.00819"), (False, "GRPO", "2402.03300")]
)
def test_the_model_card_names_the_method_trained(tmp_path, enabled, name, paper):
    trainer = H.trainer(str(tmp_path), capo_enabled=enabled)
    trainer.create_model_card()
    card = (tmp_path / "README.md").read_text()
    assert f"with {name}" in card and paper in card
    assert ("capo" in trainer.model.model_tags) == enabled
