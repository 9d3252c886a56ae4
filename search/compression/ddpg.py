"""DDPG, the actor-critic agent of AMC (He et al. 2018) and HAQ (Wang et al. 2019), in torch.

As in AMC's ``lib/agent.py``: actor and critic are two-hidden-layer MLPs (300 units; the critic
joins state and action after its first layer), the actor ends in a sigmoid and its action is
clipped to [low, high] (a keep ratio in [lbound, 1], a precision in [0, 1]); exploration adds
truncated-normal noise around the actor's action, sigma 0.5 at the first episode after warm-up
and x ``sigma_decay`` per episode after that; the first ``warmup`` episodes take uniform
random actions and do not train. Every step of an episode is stored with the episode's final
reward (discount 1: the critic learns the return of the whole policy from any step), in a
replay buffer of ``memory_episodes`` episodes; after warm-up, each episode is followed by one
update per step: a batch of 64 transitions, the batch's mean reward folded into a moving
average (``baseline_alpha``) that is subtracted from the rewards (AMC's baseline), a critic
step towards r + Q'(s', mu'(s')), an actor step up the critic, and soft target updates (tau).

Learning rates 1e-4 (actor) and 1e-3 (critic), tau 0.01, batch 64, sigma 0.5 with decay 0.95,
baseline alpha 0.5 are AMC's defaults; warm-up is 20 episodes (HAQ's; AMC's 100 suits its
400-episode searches) and is an option. One departure: the buffer stores the action the
wall applied, not the one the actor proposed, so that the critic learns the value of what
was done.

``DDPGStrategy`` puts the agent behind the ask/tell interface of ``hwlat.search.strategies``:
``ask`` runs one episode in the environment (the wall uses cost estimates only, so this is
cheap), ``tell`` gives it the reward of the built and predicted policy: the score, less how far
the policy is over any budget (possible only where estimate and prediction disagree). All
randomness comes from the seed (numpy for noise and sampling, a seeded torch generator for
the networks' initial weights), so the same seed, options and rewards give the same
policies: what resuming a stored search relies on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.stats import truncnorm
from torch import nn

from hwlat.search.compression.accuracy import single_thread
from hwlat.search.compression.env import Episode, Transition
from hwlat.search.strategies.base import Arch, Strategy


class Actor(nn.Module):
    def __init__(self, states: int, actions: int, hidden: int = 300, init_w: float = 3e-3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(states, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, actions)
        self.fc3.weight.data.uniform_(-init_w, init_w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return torch.sigmoid(self.fc3(x))


class Critic(nn.Module):
    def __init__(self, states: int, actions: int, hidden: int = 300, init_w: float = 3e-3) -> None:
        super().__init__()
        self.fc11 = nn.Linear(states, hidden)
        self.fc12 = nn.Linear(actions, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, 1)
        self.fc3.weight.data.uniform_(-init_w, init_w)

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc11(state) + self.fc12(action))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class ReplayBuffer:
    """The last ``limit`` transitions, sampled uniformly (with replacement) by a numpy generator."""

    def __init__(self, limit: int, states: int, actions: int) -> None:
        self.limit = limit
        self.states = np.zeros((limit, states), np.float32)
        self.actions = np.zeros((limit, actions), np.float32)
        self.rewards = np.zeros(limit, np.float32)
        self.next_states = np.zeros((limit, states), np.float32)
        self.not_done = np.zeros(limit, np.float32)
        self.size = 0
        self._at = 0

    def add(self, t: Transition, reward: float) -> None:
        i = self._at
        self.states[i], self.actions[i], self.rewards[i] = t.state, t.action, reward
        self.next_states[i], self.not_done[i] = t.next_state, 0.0 if t.done else 1.0
        self._at = (i + 1) % self.limit
        self.size = min(self.size + 1, self.limit)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        idx = rng.integers(0, self.size, size=n)
        return (
            self.states[idx],
            self.actions[idx],
            self.rewards[idx],
            self.next_states[idx],
            self.not_done[idx],
        )


class DDPG:
    """The agent: actor, critic, their targets, the replay buffer and AMC's reward baseline."""

    def __init__(
        self,
        states: int,
        actions: int,
        low: Sequence[float],
        high: Sequence[float],
        *,
        hidden: int = 300,
        lr_actor: float = 1e-4,
        lr_critic: float = 1e-3,
        tau: float = 0.01,
        discount: float = 1.0,
        batch_size: int = 64,
        memory: int = 2000,
        warmup: int = 20,
        sigma: float = 0.5,
        sigma_decay: float = 0.95,
        baseline_alpha: float = 0.5,
        seed: int = 0,
    ) -> None:
        self.low, self.high = np.asarray(low, float), np.asarray(high, float)
        self.tau, self.discount, self.batch_size = tau, discount, batch_size
        self.warmup, self.sigma, self.sigma_decay = warmup, sigma, sigma_decay
        self.baseline_alpha = baseline_alpha
        self.rng = np.random.default_rng(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.actor = Actor(states, actions, hidden)
            self.critic = Critic(states, actions, hidden)
        self.actor_target = _copy(self.actor)
        self.critic_target = _copy(self.critic)
        self.actor_optim = torch.optim.Adam(self.actor.parameters(), lr=lr_actor)
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=lr_critic)
        self.memory = ReplayBuffer(memory, states, actions)
        self.moving_average: float | None = None
        self.losses: list[tuple[float, float]] = []  # (critic, actor) per update

    def noise_sigma(self, episode: int) -> float:
        return self.sigma * self.sigma_decay ** max(0, episode - self.warmup)

    def act(self, state: np.ndarray, episode: int) -> np.ndarray:
        """A uniform random action during warm-up, else the actor's with truncated-normal noise."""
        if episode < self.warmup:
            return self.rng.uniform(self.low, self.high)
        with torch.no_grad():
            mu = self.actor(torch.as_tensor(state, dtype=torch.float32)[None]).numpy()[0].astype(float)
        mu = np.clip(mu, self.low, self.high)
        sigma = self.noise_sigma(episode)
        if sigma <= 0:
            return mu
        a, b = (self.low - mu) / sigma, (self.high - mu) / sigma
        sample = truncnorm.rvs(a, b, loc=mu, scale=sigma, size=mu.shape, random_state=self.rng)
        return np.clip(sample, self.low, self.high)

    def policy_action(self, state: np.ndarray) -> np.ndarray:
        """The actor's action without noise."""
        with torch.no_grad():
            mu = self.actor(torch.as_tensor(state, dtype=torch.float32)[None]).numpy()[0].astype(float)
        return np.clip(mu, self.low, self.high)

    def observe(self, transitions: Sequence[Transition], reward: float) -> None:
        for t in transitions:
            self.memory.add(t, reward)

    def update(self) -> None:
        """One critic and one actor step on a sampled batch, then the soft target updates."""
        s, a, r, s2, not_done = (torch.as_tensor(v) for v in self.memory.sample(self.batch_size, self.rng))
        mean = float(r.mean())
        if self.moving_average is None:
            self.moving_average = mean
        else:
            self.moving_average += self.baseline_alpha * (mean - self.moving_average)
        r = r - self.moving_average
        with torch.no_grad():
            target = r[:, None] + self.discount * not_done[:, None] * self.critic_target(
                s2, self.actor_target(s2)
            )
        self.critic_optim.zero_grad()
        value_loss = nn.functional.mse_loss(self.critic(s, a), target)
        value_loss.backward()
        self.critic_optim.step()
        self.actor_optim.zero_grad()
        policy_loss = -self.critic(s, self.actor(s)).mean()
        policy_loss.backward()
        self.actor_optim.step()
        _soft_update(self.actor_target, self.actor, self.tau)
        _soft_update(self.critic_target, self.critic, self.tau)
        self.losses.append((value_loss.item(), policy_loss.item()))


def _copy(module: nn.Module) -> nn.Module:
    import copy

    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


def _soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    with torch.no_grad():
        for t, s in zip(target.parameters(), source.parameters(), strict=True):
            t.mul_(1.0 - tau).add_(s, alpha=tau)


class DDPGStrategy(Strategy):
    """DDPG over a compression environment (``CompressionSpace``), as an ask/tell strategy."""

    name = "ddpg"
    default_batch_size = 1

    def __init__(
        self,
        warmup: int = 20,
        sigma: float = 0.5,
        sigma_decay: float = 0.95,
        hidden: int = 300,
        lr_actor: float = 1e-4,
        lr_critic: float = 1e-3,
        tau: float = 0.01,
        batch_size: int = 64,
        memory_episodes: int = 100,
        baseline_alpha: float = 0.5,
        overshoot_penalty: float = 1.0,
        random_state: int | None = 0,
    ) -> None:
        super().__init__(random_state)
        self.warmup = warmup
        self.sigma = sigma
        self.sigma_decay = sigma_decay
        self.hidden = hidden
        self.lr_actor = lr_actor
        self.lr_critic = lr_critic
        self.tau = tau
        self.batch_size = batch_size
        self.memory_episodes = memory_episodes
        self.baseline_alpha = baseline_alpha
        self.overshoot_penalty = overshoot_penalty
        self.agent: DDPG | None = None
        self.episode = 0
        self._pending: dict[Arch, list[Episode]] = {}
        self.rewards: list[float] = []

    def bind(self, space: Any, directions: Sequence[str], n_constraints: int) -> None:
        super().bind(space, directions, n_constraints)
        env = space.env
        self.agent = DDPG(
            env.state_size,
            env.action_size,
            env.action_low,
            env.action_high,
            hidden=self.hidden,
            lr_actor=self.lr_actor,
            lr_critic=self.lr_critic,
            tau=self.tau,
            batch_size=self.batch_size,
            memory=self.memory_episodes * len(env.steps),
            warmup=self.warmup,
            sigma=self.sigma,
            sigma_decay=self.sigma_decay,
            baseline_alpha=self.baseline_alpha,
            seed=0 if self.random_state is None else self.random_state,
        )
        if self.random_state is None:
            self.agent.rng = self.rng

    def ask(self, n: int) -> list[Arch]:
        assert self.agent is not None, "bind the strategy to a space first"
        env = self.space.env
        archs = []
        with single_thread():
            for _ in range(n):
                archs.append(self._episode(env))
        return archs

    def _episode(self, env: Any) -> Arch:
        episode = self.episode
        run = env.rollout(lambda _t, state: self.agent.act(state, episode))
        self._pending.setdefault(run.arch, []).append(run)
        self.episode += 1
        return run.arch

    def tell(self, archs: Sequence[Arch], losses: np.ndarray, ratios: np.ndarray) -> None:
        assert self.agent is not None
        env = self.space.env
        scores = -np.asarray(losses, dtype=float)[:, 0]
        ratios = np.asarray(ratios, dtype=float).reshape(len(archs), -1)
        with single_thread():
            self._learn(env, archs, scores, ratios)

    def _learn(self, env: Any, archs: Sequence[Arch], scores: np.ndarray, ratios: np.ndarray) -> None:
        for arch, score, ratio in zip(archs, scores, ratios, strict=True):
            runs = self._pending.get(tuple(arch))
            run = runs.pop(0) if runs else env.rollout_arch(arch)  # told a policy it did not ask
            if runs is not None and not runs:
                del self._pending[tuple(arch)]
            over = float(np.clip(np.nan_to_num(ratio, nan=2.0) - 1.0, 0.0, None).sum())
            reward = (score if math.isfinite(score) else 0.0) - self.overshoot_penalty * over
            self.rewards.append(reward)
            self.agent.observe(run.transitions, reward)
            if self.episode > self.warmup:
                for _ in range(len(run.transitions)):
                    self.agent.update()
