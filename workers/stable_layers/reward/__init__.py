"""Reward backends behind one interface (`base.RewardScorer`)."""
