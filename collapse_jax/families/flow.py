"""Flow matching on 2-D targets, trained generation after generation on its own samples.

Conditional flow matching with linear paths (Lipman et al. 2023, "Flow Matching for
Generative Modeling"; Liu et al. 2023, "Flow Straight and Fast"): x_t = (1 - t) x0 + t x1,
x0 ~ N(0, I), x1 a data row, t ~ U(0, 1); an MLP v(x, t) is fitted by Adam to the
target velocity x1 - x0 in squared error, and samples are the ODE dx/dt = v(x, t)
integrated from t = 0 to 1 in a fixed number of Euler or midpoint steps. Each
generation trains a network from scratch (or, under replace with --warm_start, from
the previous generation's) on the rows its regime gives.

Targets, each with 8 equally likely regions ("modes") for coverage and mass:
  ring           8 Gaussians of standard deviation `noise` at radius 2;
  moons          two interleaved half circles of radius 2 plus N(0, noise^2 I), each
                 half circle cut into 4 arcs of equal angle;
  checkerboard   uniform on the 8 black squares of a 4 x 4 board over [-2, 2]^2.

Shapes in names: R training rows, B batch rows, N samples, E evaluation rows,
Q quadrature points, K regions, D = 2 dimensions.
"""

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from collapse_jax.core import (experiment, knobs, placement, plots, protocol, sampling, scores,
                               validation)
from collapse_jax.core.settings import setting
from collapse_jax.nets.mlp import VelocityMLP

DIMS = 2
REGIONS = 8  # every target's modes
LOG_2PI = math.log(2 * math.pi)


# ---------------------------------------------------------------- randomness
# Every call of jax.random (and every split or fold_in) costs XLA's CPU compiler 0.3 to
# 1 s (more vmapped), its threefry code generated anew at each call site, and a
# generation's program holds them all. So each function draws once: a target's draw takes the
# component, position and noise of a row from one block of uniforms, the network is
# initialised from one draw, and a training step takes its rows, times and noise from one.

def uniforms(key, n, columns):
  """n rows of `columns` uniforms in [0, 1): one call of jax.random."""
  return jax.random.uniform(key, (n, columns))


def gaussian_pairs(u_Nx2):
  """N(0, I) rows from uniforms in [0, 1), by Box and Muller (D = 2): radius
  sqrt(-2 log(1 - u0)), angle 2 pi u1."""
  r_N = jnp.sqrt(-2.0 * jnp.log1p(-u_Nx2[:, 0]))
  angle_N = 2 * jnp.pi * u_Nx2[:, 1]
  return jnp.stack([r_N * jnp.cos(angle_N), r_N * jnp.sin(angle_N)], -1)


def index_of(u_N, k: int):
  """One of k equally likely indices per uniform."""
  return jnp.minimum(jnp.floor(u_N * k).astype(jnp.int32), k - 1)


# ---------------------------------------------------------------- targets

@dataclasses.dataclass(frozen=True)
class Target:
  """A 2-D truth: draw(key, n) -> x_NxD; log_density(x_NxD) -> l_N; region(x_NxD) -> r_N in
  0..REGIONS, REGIONS for a row in none; centres_KxD, a point of each region; scores(x_NxD):
  log_density as scores.Relative where it is a Gaussian mixture (exact ranking of candidates
  however close), else log_density itself; moved(x_NxD, shift, scale): the scores of the
  truth moved by shift in every coordinate and widened scale times about its centre, the
  origin (every target is centred there)."""
  name: str
  draw: Callable[..., Any]
  log_density: Callable[..., Any]
  region: Callable[..., Any]
  centres_KxD: np.ndarray
  scores: Callable[..., Any] | None = None
  moved: Callable[..., Any] | None = None

  def scorer(self):
    return self.scores or self.log_density


def _nearest(x_NxD, points_QxD):
  """(index, squared distance) of each row's nearest point."""
  d2_NxQ = sampling.squared_distances(x_NxD, points_QxD)
  return jnp.argmin(d2_NxQ, -1), jnp.min(d2_NxQ, -1)


def _moved_mixture(points_KxD, noise: float):
  """moved of an equal-weight isotropic mixture centred at the origin: its points times
  scale plus shift, its noise times scale, as scores.Relative."""
  k = points_KxD.shape[0]
  return lambda x_NxD, shift, scale: scores.isotropic_mixture(
      x_NxD, scale * jnp.asarray(points_KxD) + shift, jnp.full(k, -math.log(k)), scale * noise)


def ring(noise: float, radius: float = 2.0) -> Target:
  """8 equally weighted Gaussians N(c_k, noise^2 I), c_k at radius 2 and angle 2 pi k / 8.
  log p is the mixture's exactly; a row is in region k within 3 noise of c_k."""
  angle_K = 2 * np.pi * np.arange(REGIONS) / REGIONS
  c_KxD = np.stack([radius * np.cos(angle_K), radius * np.sin(angle_K)], 1).astype(np.float32)

  def draw(key, n):
    u_Nx3 = uniforms(key, n, 3)
    c_NxD = jnp.asarray(c_KxD)[index_of(u_Nx3[:, 0], REGIONS)]
    return c_NxD + noise * gaussian_pairs(u_Nx3[:, 1:])

  def log_density(x_NxD):
    d2_NxK = sampling.squared_distances(x_NxD, c_KxD)
    return (jax.nn.logsumexp(-0.5 * d2_NxK / noise**2, -1) - math.log(REGIONS)
            - DIMS * (0.5 * LOG_2PI + math.log(noise)))

  def region(x_NxD):
    k_N, d2_N = _nearest(x_NxD, c_KxD)
    return jnp.where(d2_N <= (3 * noise) ** 2, k_N, REGIONS)
  def relative(x_NxD):
    return scores.isotropic_mixture(x_NxD, jnp.asarray(c_KxD), jnp.full(REGIONS, -math.log(REGIONS)),
                                    noise)
  return Target('ring', draw, log_density, region, c_KxD, relative, _moved_mixture(c_KxD, noise))


MOON_QUADRATURE = 256  # midpoint-rule points per half circle for the moons' density
MOON_SPACING = 2 * math.pi / MOON_QUADRATURE  # their spacing along the arc of radius 2


def moon_points(theta_Q, xp=jnp):
  """Points of the two noise-free half circles at angles theta in [0, pi]: the upper
  (2 cos - 1, 2 sin - 0.5) and its reflection through the origin (scikit-learn's
  make_moons centred and scaled by 2). Returns 2Q x D, the upper half circle first."""
  upper_QxD = xp.stack([2 * xp.cos(theta_Q) - 1, 2 * xp.sin(theta_Q) - 0.5], 1)
  return xp.concatenate([upper_QxD, -upper_QxD]).astype(np.float32)


def moons(noise: float) -> Target:
  """Two moons as the noisy process that draws them: a half circle (each with probability
  1/2), an angle theta ~ U(0, pi), the point on it plus N(0, noise^2 I). Its density
  p(x) = sum_m 1/2 int_0^pi N(x; c_m(theta), noise^2 I) dtheta / pi, by the midpoint rule
  on MOON_QUADRATURE angles per half circle (spacing 0.025 along the arc: for noise at
  least twice that, the rule's relative error, about exp(-2 pi^2 noise^2 / spacing^2),
  is far below float32's). Region 4m + j: the row's nearest
  quadrature point lies on half circle m at theta in [j pi / 4, (j + 1) pi / 4), within
  3 noise."""
  q = MOON_QUADRATURE
  points_QxD = moon_points(np.pi * (np.arange(q) + 0.5) / q, np)
  centres_KxD = moon_points(np.pi * (np.arange(4) + 0.5) / 4, np)

  def draw(key, n):
    u_Nx4 = uniforms(key, n, 4)
    sign_N = jnp.where(u_Nx4[:, 0] < 0.5, 1.0, -1.0)
    upper_NxD = moon_points(jnp.pi * u_Nx4[:, 1])[:n]
    return sign_N[:, None] * upper_NxD + noise * gaussian_pairs(u_Nx4[:, 2:])

  def log_density(x_NxD):
    d2_NxQ = sampling.squared_distances(x_NxD, points_QxD)
    return (jax.nn.logsumexp(-0.5 * d2_NxQ / noise**2, -1) - math.log(2 * q)
            - DIMS * (0.5 * LOG_2PI + math.log(noise)))

  def region(x_NxD):
    i_N, d2_N = _nearest(x_NxD, points_QxD)
    k_N = (i_N // q) * 4 + (i_N % q) * 4 // q
    return jnp.where(d2_N <= (3 * noise) ** 2, k_N, REGIONS)
  def relative(x_NxD):
    return scores.isotropic_mixture(x_NxD, jnp.asarray(points_QxD), jnp.full(2 * q, -math.log(2 * q)),
                                    noise)
  return Target('moons', draw, log_density, region, centres_KxD, relative,
                _moved_mixture(points_QxD, noise))


OFF_BOARD_SCALE = 0.01  # the checkerboard's stand-in log density falls as -d^2 / (2 * this^2)


def checkerboard() -> Target:
  """Uniform on the 8 black squares (i + j even) of side 1 tiling [-2, 2]^2, square (i, j)
  at [i - 2, i - 1] x [j - 2, j - 1]: density 1/8 there, 0 elsewhere. log_density is
  log(1/8) on the black squares and, off them, log(1/8) - d^2 / (2 OFF_BOARD_SCALE^2), d
  the distance to the nearest black square: a finite stand-in for -inf (at d = 0.1 it is
  already 50 nats down) that ranks a near miss above a far one, as verify and curate
  need. Region k: inside black square k."""
  corner_KxD = np.array([(i - 2, j - 2) for i in range(4) for j in range(4) if (i + j) % 2 == 0],
                        np.float32)

  def draw(key, n):
    u_Nx3 = uniforms(key, n, 3)
    return jnp.asarray(corner_KxD)[index_of(u_Nx3[:, 0], REGIONS)] + u_Nx3[:, 1:]

  def gap2(x_NxD):  # squared distance to each black square, N x K
    below_NxKxD = corner_KxD[None] - x_NxD[:, None]
    out_NxKxD = jnp.maximum(jnp.maximum(below_NxKxD, -below_NxKxD - 1.0), 0.0)
    return jnp.sum(out_NxKxD**2, -1)

  def log_density(x_NxD):
    return -math.log(REGIONS) - 0.5 * jnp.min(gap2(x_NxD), -1) / OFF_BOARD_SCALE**2

  def region(x_NxD):
    g_NxK = gap2(x_NxD)
    return jnp.where(jnp.min(g_NxK, -1) == 0.0, jnp.argmin(g_NxK, -1), REGIONS)
  def moved(x_NxD, shift, scale):  # the squares widened and moved, the stand-in with them
    return log_density((x_NxD - shift) / scale) - DIMS * jnp.log(scale)
  return Target('checkerboard', draw, log_density, region, corner_KxD + 0.5, moved=moved)


TARGETS = {'ring': ring, 'moons': moons, 'checkerboard': lambda noise: checkerboard()}


# ---------------------------------------------------------------- the flow

SOLVERS = ('euler', 'midpoint')
LR_FLOOR = 0.05  # the learning rate's last value, as a fraction of its first


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The network, its training and its sampler: Adam, its rate decayed from lr to lr / 20
  along a cosine over the steps, on minibatches drawn from the rows with probability
  proportional to their weights."""
  hidden: int = 256
  layers: int = 4
  time_features: int = 16
  steps: int = 5000
  batch: int = 512
  lr: float = 1e-3
  ode_steps: int = 32
  solver: str = 'midpoint'

  @property
  def model(self) -> VelocityMLP:
    return VelocityMLP(DIMS, self.hidden, self.layers, self.time_features)

  def optimizer(self):
    return optax.adam(optax.cosine_decay_schedule(self.lr, self.steps, LR_FLOOR))


def init(cfg: TrainConfig, key):
  """LeCun-normal kernels (N(0, 1 / fan_in), untruncated) and zero biases, from one draw."""
  shapes = jax.eval_shape(cfg.model.init, jax.random.key(0), jnp.zeros((1, DIMS)),
                          jnp.zeros(1))['params']
  leaves, tree = jax.tree.flatten(shapes)
  sizes = [math.prod(leaf.shape) for leaf in leaves]
  z = jax.random.normal(key, (sum(sizes),))
  params, at = [], 0
  for leaf, size in zip(leaves, sizes):
    params.append(z[at:at + size].reshape(leaf.shape) / math.sqrt(leaf.shape[0])
                  if len(leaf.shape) == 2 else jnp.zeros(leaf.shape))
    at += size
  return jax.tree.unflatten(tree, params)


def flow_batch(x1_BxD, u_BxD):
  """(x_t, t, x1 - x0) of a batch: x_t = (1 - t) x0 + t x1, t ~ U(0, 1), x0 ~ N(0, I), from
  uniforms u: t the first column, x0 from the next two."""
  t_B = u_BxD[:, 0]
  x0_BxD = gaussian_pairs(u_BxD[:, 1:3])
  return (1 - t_B)[:, None] * x0_BxD + t_B[:, None] * x1_BxD, t_B, x1_BxD - x0_BxD


def cfm_loss(model: VelocityMLP, params, x1_BxD, u_BxD):
  """The conditional flow-matching loss of a batch: the mean over rows of
  |v(x_t, t) - (x1 - x0)|^2 (flow_batch)."""
  xt_BxD, t_B, target_BxD = flow_batch(x1_BxD, u_BxD)
  v_BxD = model.apply({'params': params}, xt_BxD, t_B)
  return jnp.mean(jnp.sum((v_BxD - target_BxD) ** 2, -1))


def gaussian_min_loss(std: float, dims: int = DIMS) -> float:
  """The least cfm_loss any v can reach on the target N(0, std^2 I): dims std pi / 2.

  (x_t, x1 - x0) are jointly Gaussian, per dimension Var x_t = (1-t)^2 + t^2 s^2,
  Cov = t s^2 - (1 - t), Var(x1 - x0) = 1 + s^2; the best v is E[x1 - x0 | x_t], whose
  error is the conditional variance s^2 / ((1-t)^2 + t^2 s^2), and its integral over
  t in [0, 1] is s (arctan s + arctan 1/s) = s pi / 2. (Derived here; the x-blind best
  guess v(t) = E[x1 - x0] = 0 scores dims (1 + s^2) instead.)
  """
  return dims * std * math.pi / 2


def fit(cfg: TrainConfig, x_RxD, w_R, key, params=None):
  """A velocity field trained for cfg.steps Adam steps on the weighted rows: each batch is
  cfg.batch rows drawn with probability w / sum(w), so the expected loss is the weighted
  one, sum_r w_r l_r / sum_r w_r, and rows of weight 0 (padding) play no part. From
  `params` when given (a warm start), else from a fresh initialisation. Returns (params,
  {'train_loss': the mean batch loss over the last tenth of the steps})."""
  model, tx = cfg.model, cfg.optimizer()
  init_key, loop_key = jax.random.split(key)
  params = init(cfg, init_key) if params is None else params
  cdf_R = jnp.cumsum(w_R)
  tail = max(cfg.steps // 10, 1)

  def step(s, state):
    params, opt_state, total = state
    u_Bx4 = uniforms(jax.random.fold_in(loop_key, s), cfg.batch, 4)
    x1_BxD = x_RxD[sampling.invert_cdf(cdf_R, u_Bx4[:, 0])]
    loss, grads = jax.value_and_grad(lambda p: cfm_loss(model, p, x1_BxD, u_Bx4[:, 1:]))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    total = total + jnp.where(s >= cfg.steps - tail, loss, 0.0)
    return optax.apply_updates(params, updates), opt_state, total

  params, _, total = jax.lax.fori_loop(0, cfg.steps, step, (params, tx.init(params), 0.0))
  return params, {'train_loss': total / tail}


def _velocity(cfg: TrainConfig, params, x_NxD, t):
  return cfg.model.apply({'params': params}, x_NxD, jnp.full(x_NxD.shape[:1], t))


def integrate(cfg: TrainConfig, params, x_NxD, forward: bool = True):
  """x moved along dx/dt = v(x, t) from t = 0 to 1 (forward) or from 1 to 0, in cfg.ode_steps
  Euler or midpoint steps."""
  h = (1.0 if forward else -1.0) / cfg.ode_steps
  t0 = 0.0 if forward else 1.0

  def step(i, x_NxD):
    t = t0 + i * h
    if cfg.solver == 'euler':
      return x_NxD + h * _velocity(cfg, params, x_NxD, t)
    mid_NxD = x_NxD + 0.5 * h * _velocity(cfg, params, x_NxD, t)
    return x_NxD + h * _velocity(cfg, params, mid_NxD, t + 0.5 * h)
  return jax.lax.fori_loop(0, cfg.ode_steps, step, x_NxD)


# The law sampled at temperature t: its initial noise N(0, t^2 I), carried by the same ODE;
# network(params): (the network's own params, t or None).
tempered, network = knobs.with_temperature, knobs.split_temperature


def sample(cfg: TrainConfig, params, key, n):
  """n samples: N(0, I) noise (times t, tempered) carried from t = 0 to 1 by the learned ODE."""
  params, t = network(params)
  x0_NxD = gaussian_pairs(uniforms(key, n, 2))
  return integrate(cfg, params, x0_NxD if t is None else t * x0_NxD)


def velocity_and_divergence(cfg: TrainConfig, params, x_NxD, t):
  """v(x, t) and its divergence, the trace of dv/dx, exactly: one forward-mode product per
  dimension (2 here), each row's Jacobian being its own."""
  f = lambda x: _velocity(cfg, params, x, t)  # noqa: E731
  basis_DxNxD = jnp.broadcast_to(jnp.eye(DIMS)[:, None], (DIMS,) + x_NxD.shape)
  v_DxNxD, jv_DxNxD = jax.vmap(lambda e: jax.jvp(f, (x_NxD,), (e,)))(basis_DxNxD)
  return v_DxNxD[0], jnp.einsum('ini->n', jv_DxNxD)


def pull_back(cfg: TrainConfig, params, x_NxD):
  """(x0, the integral over t of div v along the path) of each row: the ODE run backward
  from x at t = 1, with the same solver and steps as the sampler."""
  h = -1.0 / cfg.ode_steps

  def step(i, state):
    x_NxD, div_N = state
    t = 1.0 + i * h
    if cfg.solver == 'euler':
      v_NxD, d_N = velocity_and_divergence(cfg, params, x_NxD, t)
      return x_NxD + h * v_NxD, div_N - h * d_N
    mid_NxD = x_NxD + 0.5 * h * _velocity(cfg, params, x_NxD, t)
    v_NxD, d_N = velocity_and_divergence(cfg, params, mid_NxD, t + 0.5 * h)
    return x_NxD + h * v_NxD, div_N - h * d_N
  return jax.lax.fori_loop(0, cfg.ode_steps, step, (x_NxD, jnp.zeros(x_NxD.shape[0])))


def log_density(cfg: TrainConfig, params, x_NxD):
  """The flow's log density by the instantaneous change of variables (Chen et al. 2018,
  "Neural Ordinary Differential Equations"): log p_1(x) = log N(x0; 0, I) - int_0^1 div v
  dt along the path through x, integrated backward by the sampler's solver and steps
  (its error is the solver's)."""
  x0_NxD, div_N = pull_back(cfg, params, x_NxD)
  return -0.5 * jnp.sum(x0_NxD**2, -1) - 0.5 * DIMS * LOG_2PI - div_N


def refit_warm(cfg: TrainConfig, params, key, n):
  """replace with a warm start: n samples of the model (its tempered law, where the
  driver passes one), then training continued from its weights (Adam's moments start
  afresh)."""
  sample_key, fit_key = jax.random.split(key)
  return fit(cfg, sample(cfg, params, sample_key, n), jnp.ones(n), fit_key, network(params)[0])


# ---------------------------------------------------------------- metrics

def kth_neighbour2(d2_NxN, k: int):
  """Squared distance from each row to its k-th nearest other row (the row itself, at 0,
  is the nearest of all)."""
  return -jax.lax.top_k(-d2_NxN, k + 1)[0][:, k]


def sliced_w2(x_ExD, y_ExD, directions: int = 32):
  """The sliced 2-Wasserstein distance between two equal-sized samples: the root mean over
  `directions` evenly spaced angles of W2^2 between the projections (sorted rows)."""
  angle_P = jnp.pi * (jnp.arange(directions) + 0.5) / directions
  u_DxP = jnp.stack([jnp.cos(angle_P), jnp.sin(angle_P)])
  px_ExP, py_ExP = jnp.sort(x_ExD @ u_DxP, 0), jnp.sort(y_ExD @ u_DxP, 0)
  return jnp.sqrt(jnp.mean((px_ExP - py_ExP) ** 2))


def precision_recall(real_ExD, real_radius2_E, fake_ExD, k: int):
  """Improved precision and recall (Kynkaanniemi et al. 2019): the share of fake rows
  inside some real row's k-NN ball (quality), and of real rows inside some fake row's
  (diversity)."""
  d2_ExE = sampling.squared_distances(fake_ExD, real_ExD)
  fake_radius2_E = kth_neighbour2(sampling.squared_distances(fake_ExD, fake_ExD), k)
  precision = jnp.mean(jnp.any(d2_ExE <= real_radius2_E[None], 1))
  recall = jnp.mean(jnp.any(d2_ExE <= fake_radius2_E[:, None], 0))
  return precision, recall


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """What a generation is measured by: the first `rows` of its samples against as many of
  the truth's (drawn once per run), k of the k-NN balls, the MMD's kernel bandwidth, the
  share of a region's true mass 1/8 that counts it covered, and the points kept per
  generation for the scatter panels."""
  rows: int = 2000
  knn: int = 3
  bandwidth: float = 0.2
  cover_fraction: float = 0.25
  points: int = 400


def reference(tgt: Target, ecfg: EvalConfig, key):
  """The run's truth sample with its k-NN radii and its own MMD term."""
  truth_ExD = tgt.draw(key, ecfg.rows)
  d2_ExE = sampling.squared_distances(truth_ExD, truth_ExD)
  return {'truth': truth_ExD, 'radius2': kth_neighbour2(d2_ExE, ecfg.knn),
          'kxx': sampling.kernel_mean_off_diagonal(d2_ExE, ecfg.bandwidth)}


def evaluate(tgt: Target, ecfg: EvalConfig, synth_NxD, ref):
  """Distance to the truth (MMD^2, sliced W2), precision and recall, regions covered, the
  mass of each region and off every region, and the first points for the figures."""
  x_ExD = synth_NxD[:ecfg.rows]
  precision, recall = precision_recall(ref['truth'], ref['radius2'], x_ExD, ecfg.knn)
  region_E = tgt.region(x_ExD)
  mass_K = jnp.mean(region_E[:, None] == jnp.arange(REGIONS), 0)
  out = {'mmd2': sampling.mmd2(x_ExD, ref['truth'], ecfg.bandwidth, ref['kxx']),
         'sliced_w2': sliced_w2(ref['truth'], x_ExD), 'precision': precision, 'recall': recall,
         'modes_covered': jnp.sum(mass_K >= ecfg.cover_fraction / REGIONS).astype(jnp.int32),
         'off_mode': jnp.mean(region_E == REGIONS),
         'truth_ll': jnp.mean(tgt.log_density(x_ExD)),
         POINTS: synth_NxD[:ecfg.points]}
  out.update({f'mass_{k}': mass_K[k] for k in range(REGIONS)})
  return out


POINTS = 'points'  # the metric holding each generation's first samples, for the figures


# ---------------------------------------------------------------- the experiment

@dataclasses.dataclass(frozen=True)
class FlowConfig(experiment.SweepConfig):
  """The flow experiment; defaults sized for an accelerator (many seeds vmapped, a 4 x 256
  MLP trained 5,000 steps of 512 rows a generation); --preset=small runs on a CPU in
  minutes."""
  seeds: int = 16
  generations: int = 40
  samples: int = setting(2000, 'Samples each generation draws and trains on.')
  target: str = setting('ring', 'The truth: 8 Gaussians on a ring of radius 2, two moons, or a '
                        '4 x 4 checkerboard over [-2, 2]^2.', choices=tuple(TARGETS))
  noise: float = setting(0.1, 'ring: the standard deviation of each Gaussian; moons: of the '
                         'noise around the half circles (the checkerboard has none).')
  # TrainConfig's fields, flat for the flags
  hidden: int = setting(TrainConfig.hidden, 'Width of the velocity MLP.')
  layers: int = setting(TrainConfig.layers, 'Hidden layers of the velocity MLP.')
  time_features: int = setting(TrainConfig.time_features, 'Sinusoidal features of t (even).')
  steps: int = setting(TrainConfig.steps, 'Adam steps per generation.')
  batch: int = setting(TrainConfig.batch, 'Rows per step, drawn with probability proportional '
                       'to their weights.')
  lr: float = setting(TrainConfig.lr, 'Adam learning rate, decayed along a cosine to a '
                      'twentieth.')
  ode_steps: int = setting(TrainConfig.ode_steps, 'Solver steps from noise to a sample (and '
                           'back, for the log density).')
  solver: str = setting(TrainConfig.solver, 'The ODE solver.', choices=SOLVERS)
  warm_start: bool = setting(False, 'Under replace, train each generation on from the previous '
                             "generation's weights instead of from scratch.")
  # EvalConfig's, under their flags' names
  eval_samples: int = setting(EvalConfig.rows, 'Samples measured per generation (at most '
                              '--samples), against as many of the truth.')
  knn: int = setting(EvalConfig.knn, 'k of the k-NN balls of precision and recall.')
  mmd_bandwidth: float = setting(EvalConfig.bandwidth, 'Bandwidth of the Gaussian kernel of the '
                                 'MMD.')
  cover_fraction: float = setting(EvalConfig.cover_fraction, 'A region counts as covered when '
                                  'it holds at least this share of its true mass (1/8).')
  reward_target: tuple[float, ...] = setting(
      (), "--score=reward: the reward is -|x - c|^2 for this point c, 'x,y' (empty: the centre "
      "of the target's region 0).")
  checkpoint_every: int = 5

  @property
  def train(self) -> TrainConfig:
    return TrainConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)})

  @property
  def eval(self) -> EvalConfig:
    return EvalConfig(self.eval_samples, self.knn, self.mmd_bandwidth, self.cover_fraction,
                      min(EvalConfig.points, self.samples))

  def truth(self) -> Target:
    return TARGETS[self.target](self.noise)

  def reward_point(self) -> np.ndarray:
    return np.asarray(self.reward_target or self.truth().centres_KxD[0], np.float32)

  def validate(self) -> 'FlowConfig':
    validation.check_choice('target', self.target, TARGETS)
    validation.check_choice('solver', self.solver, SOLVERS)
    self.validate_sweep(min_samples=self.knn + 1)
    checks = [('noise', self.noise > 0, 'must be positive'),
              ('noise', self.target != 'moons' or self.noise >= 2 * MOON_SPACING,
               f'must be at least {2 * MOON_SPACING:.2g} for moons (twice the spacing of its '
               "density's quadrature)"),
              ('hidden', self.hidden >= 1, 'must be at least 1'),
              ('layers', self.layers >= 1, 'must be at least 1'),
              ('time_features', self.time_features >= 2 and self.time_features % 2 == 0,
               'must be even and at least 2'),
              ('steps', self.steps >= 1, 'must be at least 1'),
              ('batch', self.batch >= 1, 'must be at least 1'),
              ('lr', self.lr > 0, 'must be positive'),
              ('ode_steps', self.ode_steps >= 1, 'must be at least 1'),
              ('knn', self.knn >= 1, 'must be at least 1'),
              ('eval_samples', self.knn < self.eval_samples <= self.samples,
               f'must be more than --knn ({self.knn}) and at most --samples ({self.samples})'),
              ('mmd_bandwidth', self.mmd_bandwidth > 0, 'must be positive'),
              ('cover_fraction', 0 < self.cover_fraction <= 1, 'must be in (0, 1]'),
              ('warm_start', not self.warm_start or set(self.regimes) == {'replace'},
               'applies only to the regime replace (the one where the driver hands a family '
               'the previous model)'),
              ('reward_target', len(self.reward_target) in (0, DIMS),
               f'needs {DIMS} coordinates or none'),
]
    validation.check_fields(self, checks)
    validation.validate_options(self, family(self))
    return self


# The CPU preset: the three findings in one command, 4 seeds x 8 generations of a 3 x 48 MLP
# trained 3,000 steps (fewer steps or a smaller batch leave generation 0 visibly blurred).
SMALL = dict(seeds=4, generations=8, samples=1000, hidden=48, layers=3, steps=3000, batch=256,
             lr=3e-3, ode_steps=16, eval_samples=1000, checkpoint_every=1,
             regimes=('replace', 'fresh', 'augment'), real_fractions=(0.5,),
             synthetic_ratios=(0.1, 0.5))
PRESETS = {'paper': {}, 'small': SMALL}


def family(cfg: FlowConfig) -> protocol.Family:
  """The flow as a driver family: each fit a whole training run inside the compiled
  program, many runs vmapped together on an accelerator."""
  train, ecfg, tgt = cfg.train, cfg.eval, cfg.truth()
  reward_D = jnp.asarray(cfg.reward_point())
  return protocol.Family(
      draw_real=tgt.draw,
      fit=lambda x_RxD, w_R, key: fit(train, x_RxD, w_R, key),
      refit=functools.partial(refit_warm, train) if cfg.warm_start else None,
      sample=functools.partial(sample, train),
      reference=lambda params0, key: reference(tgt, ecfg, key),
      evaluate=lambda params, synth_NxD, ref: evaluate(tgt, ecfg, synth_NxD, ref),
      log_density=functools.partial(log_density, train),
      true_log_density=tgt.scorer(),
      reward=lambda x_NxD: scores.squared_distance(x_NxD, reward_D),
      biased=tempered, sampling_knobs=('temperature',), verifier=tgt.moved,
      # On a CPU, 8 vmapped runs train at 0.85x the steps per second of one run alone
      # (benchmarks/flow_throughput.py): there they run one after another, as the VAE's do.
      one_at_a_time_on_cpu=True)


# ---------------------------------------------------------------- figures

def scatter_panels(sweeps, points, tgt: Target, path: str, title: str,
                   generations=(0, 1, 2, 5, 10, 20, 40, 100)):
  """The first run's samples of each regime and parameter value (rows) at chosen
  generations (columns), over a grey sample of the truth."""
  import matplotlib.pyplot as plt  # noqa: PLC0415 (plots has chosen the backend)
  rows = [(sweep, value, p) for (sweep, _), p in zip(sweeps, points) for value in sweep.fractions]
  last = rows[0][0].generations
  shown = [g for g in generations if g < last] + [last]
  truth = np.asarray(jax.jit(tgt.draw, static_argnums=1)(jax.random.key(0), 2000))
  fig, axes = plt.subplots(len(rows), len(shown), figsize=(2.2 * len(shown), 2.3 * len(rows)),
                           squeeze=False, sharex=True, sharey=True)
  for r, (sweep, value, p_GxBxPxD) in enumerate(rows):
    b = int(np.flatnonzero(sweep.runs()[1] == np.float32(value))[0])
    for ax, g in zip(axes[r], shown):
      ax.scatter(truth[:, 0], truth[:, 1], s=1, c='0.85', rasterized=True)
      ax.scatter(p_GxBxPxD[g, b, :, 0], p_GxBxPxD[g, b, :, 1], s=2, c='C0', rasterized=True)
      ax.set_xlim(-3.2, 3.2)
      ax.set_ylim(-3.2, 3.2)
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title(f'generation {g}', fontsize=9)
    axes[r, 0].set_ylabel(plots.run_label(sweep.regime, sweep.samples, value), fontsize=8)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  if placement.is_primary():  # one copy per multi-host run
    fig.savefig(path, dpi=110)
  plt.close(fig)


SUMMARY_COLUMNS = ('mmd2', 'precision', 'recall', 'modes_covered', 'off_mode')
LEADING_COLUMNS = ('mmd2', 'sliced_w2', 'precision', 'recall', 'modes_covered', 'off_mode',
                   'truth_ll', 'train_loss')


def set_aside(sweep, metrics):
  """The first samples of each generation, kept for the figures rather than the tables."""
  return sweep, metrics, metrics.pop(POINTS)


def figures(cfg: FlowConfig, out: experiment.Outcome) -> None:
  """quality.png, samples.png and tradeoff.png."""
  title = f'flow matching on {cfg.target}, refitted on its own samples, {cfg.seeds} seeds'
  plots.curves(out.curves, [('precision', 'precision (quality)', False),
                            ('recall', 'recall (diversity)', False),
                            ('mmd2', f'MMD^2 to the truth (bandwidth {cfg.mmd_bandwidth:g})', False),
                            ('modes_covered', f'regions covered (of {REGIONS})', False)],
               out.path('quality.png'), title=title)
  scatter_panels(out.sweeps, out.kept, cfg.truth(), out.path('samples.png'),
                 f'{cfg.target}: samples of seed {cfg.first_seed}')
  plots.scores_against(out.curves, ('recall', 'recall (diversity)'), out.path('tradeoff.png'),
                       title)


def run(cfg: FlowConfig, workdir: str, progress: bool = True, log=print):
  """Runs, resumes or reloads the flow experiment in `workdir`; returns its table.

  Leaves there: config.json, checkpoints/<regime>/, metrics.csv (one row per generation
  x seed x regime x parameter value, with the mass of every region), samples.png (the
  first run's samples across generations), quality.png (precision, recall, MMD^2 and
  regions covered against generation), tradeoff.png and summary.txt.
  """
  exp = experiment.Experiment(
      'flow', lambda: family(cfg), SUMMARY_COLUMNS, generations=(1, 5, 10, 20),
      first=LEADING_COLUMNS, set_aside=set_aside, figures=functools.partial(figures, cfg))
  return experiment.run_experiment(exp, cfg, workdir, progress, log).table
