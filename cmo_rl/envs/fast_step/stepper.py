"""One ``Builder.step`` for every sub-env at once: physics per sub-env, task logic batched.

Per sub-env, in stock order: clip the action into ``data.ctrl``, draw the frameskip
(``RandomState.binomial``), move the mocaps and ``mj_step`` that many times, then the same
``mj_forward`` calls as stock (after the physics, in ``calculate_cost``, in ``obs``; and those
of ``update_layout``/``update_world`` when a goal is met, which run stock code). ``mj_forward``
is *not* idempotent (it renormalises the quaternions in ``qpos`` in place and the constraint
solver warm-starts from the previous call), so none is skipped, and every quantity is read after
the forward stock reads it after: reward inputs after the 1st, cost inputs and ``Builder.step``'s
``goal_achieved`` after the 2nd, observations after the 3rd (positions can differ by an ulp
between them). Between those calls the batched code evaluates reward, cost, ``goal_achieved``
and the observation over the gathered ``xpos``/``xmat``/``sensordata``/contacts of all sub-envs
with :mod:`cmo_rl.envs.fast_step.kernels`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mujoco
import numpy as np

from cmo_rl.envs.fast_step import kernels
from cmo_rl.envs.fast_step.structure import CONTACT_PREFIX, ObsLayout, SceneIndex, quat2mat

__all__ = ["NavigationStepper"]


def _family(task: Any) -> str:
    return type(task).__name__.split("Level")[0].lower()  # goal / button / push / circle


class NavigationStepper:
    """Steps ``envs`` (raw ``Builder`` envs of one navigation task) as one batch.

    :meth:`step` returns what ``[env.step(a) for env, a in zip(envs, actions)]`` would
    (observation, reward, cost, terminated, truncated; not the ``info`` dicts) and leaves every
    env, its task and its MuJoCo data in the state stock stepping would leave them in, so
    stock ``reset``/``step`` calls may follow. Only ``Builder.cost`` (the last cost dict, read
    by rendering, which fast steps refuse) is not updated. Envs must be stepped only after
    :meth:`Builder.reset`; each reset's rebuilt scene is picked up automatically.

    Examples:
        >>> import numpy as np, cmo_rl, safety_gymnasium
        >>> from cmo_rl.envs.fast_step import make_stepper
        >>> fast, stock = ([safety_gymnasium.make("SafetyCarGoal1-v0") for _ in range(2)]
        ...                for _ in range(2))
        >>> _ = [env.reset(seed=i) for envs in (fast, stock) for i, env in enumerate(envs)]
        >>> stepper, actions = make_stepper(fast), np.full((2, 2), 0.3)
        >>> obs, reward, cost, terminated, truncated = stepper.step(actions)
        >>> expected = [env.step(a) for env, a in zip(stock, actions)]
        >>> bool((obs == np.stack([e[0] for e in expected])).all())  # bit for bit
        True
        >>> reward.tolist() == [e[1] for e in expected], cost.tolist() == [e[2] for e in expected]
        (True, True)
    """

    def __init__(self, envs: Sequence[Any]) -> None:
        self._builders = list(envs)
        n = len(self._builders)
        task = self._builders[0].task
        self._family = _family(task)
        self._n = n
        self._index: SceneIndex | None = None
        self._layout: ObsLayout | None = None
        self._datas: list[Any] = [None] * n
        self._models: list[Any] = [None] * n
        self._ctrl: list[np.ndarray] = [None] * n
        self._xpos: list[np.ndarray] = [None] * n
        self._xmat: list[np.ndarray] = [None] * n
        self._sensordata: list[np.ndarray] = [None] * n
        self._mocap_pos: list[np.ndarray] = [None] * n
        self._obstacles = {o.name: o for o in task._obstacles}  # configuration (shared values)
        self._lidar = task.lidar_conf
        self._sim = task.sim_conf
        gremlins = self._obstacles.get("gremlins")
        self._gremlins = None if gremlins is None else (gremlins.travel, gremlins.size)
        self._indicator = task.cost_conf.constrain_indicator
        self._reward_clip = task.reward_conf.reward_clip
        self._contact_costs = [
            (o.name, CONTACT_PREFIX[type(o).__name__])
            for o in task._obstacles
            if type(o).__name__ in CONTACT_PREFIX and o.is_constrained
        ]
        self._needs_contacts = bool(self._contact_costs) or self._family == "button"

    # ------------------------------------------------------------------------------------------
    # per-scene caches
    # ------------------------------------------------------------------------------------------

    def _refresh(self, i: int, task: Any) -> None:
        index = SceneIndex.build(task)
        if self._index is None:
            self._index = index
            self._layout = ObsLayout.build(task, index)
            ctrl_range = task.model.actuator_ctrlrange
            self._ctrl_lo, self._ctrl_hi = ctrl_range[:, 0].copy(), ctrl_range[:, 1].copy()
            nbody = task.model.nbody
            # body positions after each of the 3 forwards, + a constant origin row (Circle)
            self._xpos_buf = np.zeros((3, self._n, nbody + 1, 3))
            vases = self._obstacles.get("vases")
            self._vase_speed = None
            if vases is not None and vases.is_constrained and vases.velocity_cost:
                self._vase_speed = index.bodies["vases"]
            self._speed_buf = np.zeros((self._n, max(3, len(index.bodies.get("vases", ())))))
            blocks = [  # first column of each lidar-observed object's block, in obs order
                col
                for name, col in self._layout.lidar.items()
                for _ in range(len(index.bodies[name]))
            ]
            self._lidar_index = np.arange(self._n)[:, None] * self._layout.dim + np.array(
                blocks, dtype=np.int64
            )
        elif index.signature != self._index.signature:
            raise RuntimeError(
                f"sub-env {i} rebuilt a scene with a different structure; fast steps assume "
                "every sub-env of a task has the same bodies, geoms and sensors"
            )
        model, data = task.model, task.data
        self._models[i], self._datas[i] = model, data
        self._ctrl[i], self._xpos[i], self._xmat[i] = data.ctrl, data.xpos, data.xmat
        self._sensordata[i], self._mocap_pos[i] = data.sensordata, data.mocap_pos

    # ------------------------------------------------------------------------------------------
    # the step
    # ------------------------------------------------------------------------------------------

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``actions [N, act]`` -> ``(obs [N, D] float64, reward, cost, terminated, truncated)``."""
        builders, n = self._builders, self._n
        tasks = [b.task for b in builders]
        for i, task in enumerate(tasks):
            if task.world.data is not self._datas[i]:
                self._refresh(i, task)
        models, datas = self._models, self._datas
        ctrl = np.clip(actions, self._ctrl_lo, self._ctrl_hi)
        index = self._index
        # mj_forward also renormalises qpos quaternions in place, so positions may move by an
        # ulp from one forward to the next: reward reads them after the 1st forward, cost and
        # Builder.step's goal check after the 2nd, obs after the 3rd, as stock does.
        first, second, contacts1, contacts2, speed = self._physics(tasks, ctrl)
        agent1 = first[:, index.agent]
        agent2 = second[:, index.agent]
        reward, _ = self._reward(tasks, first, agent1, contacts1, speed)
        achieved = self._achieved(tasks, second, agent2, contacts2)
        cost = self._cost(tasks, second, agent2, contacts2, speed)

        # specific_step, goal handling, death, time limit, then obs's mj_forward (per env)
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        for i, builder in enumerate(builders):
            task = tasks[i]
            task.specific_step()
            if achieved[i]:
                self._goal_met(builder, task)
            if not task.agent.is_alive():
                builder.terminated = True
            builder.steps += 1
            if builder.steps >= task.num_steps:
                builder.truncated = True
            mujoco.mj_forward(models[i], datas[i])
            terminated[i], truncated[i] = builder.terminated, builder.truncated
        third = self._xpos_buf[2]
        nbody = third.shape[1] - 1
        np.stack(self._xpos, out=third[:, :nbody])
        agent_mat = np.stack([xmat[index.agent] for xmat in self._xmat]).reshape(n, 3, 3)
        obs = self._obs(tasks, third, third[:, index.agent], agent_mat)
        return obs, reward, cost, terminated, truncated

    def _physics(self, tasks: list, ctrl: np.ndarray) -> tuple:
        """``simulation_forward`` (minus the never-raised ``MujocoException``), cost's forward.

        Returns the body positions after the 1st and the 2nd ``mj_forward`` (``[N, nbody + 1,
        3]``, last row the origin), the contacts after each (if a cost or goal reads them) and,
        for Circle, the agent's velocity after the 1st / for Goal2, the vases' speeds after the
        2nd.
        """
        nstep, p = self._sim.frameskip_binom_n, self._sim.frameskip_binom_p
        mj_step, mj_forward = mujoco.mj_step, mujoco.mj_forward
        gremlins = self._gremlins
        index = self._index
        mocap_ids = index.mocap_ids
        first, second = self._xpos_buf[0], self._xpos_buf[1]
        nbody = first.shape[1] - 1
        contacts = self._needs_contacts
        contacts1, contacts2 = [], []
        speed = self._speed_buf
        circle, vases = self._family == "circle", self._vase_speed
        for i, task in enumerate(tasks):
            model, data = self._models[i], self._datas[i]
            self._ctrl[i][:] = ctrl[i]
            steps = task.random_generator.random_generator.binomial(nstep, p)
            if gremlins is None:
                if steps:
                    mj_step(model, data, steps)
            else:
                travel, size = gremlins
                mocap_pos = self._mocap_pos[i]
                for _ in range(steps):  # Gremlins.move: every gremlin gets the same target
                    phase = float(data.time)
                    target = np.array([np.sin(phase), np.cos(phase)]) * travel
                    mocap_pos[mocap_ids, :2] = target
                    mocap_pos[mocap_ids, 2] = size
                    mj_step(model, data)
            mj_forward(model, data)  # simulation_forward's
            first[i, :nbody] = self._xpos[i]
            if contacts:
                contacts1.append(_contact_pairs(data))
            if circle:  # get_body_xvelp(model, data, "agent"), read by the reward
                speed[i, :3] = _body_velocity(model, data, index.agent)
            mj_forward(model, data)  # calculate_cost's
            second[i, :nbody] = self._xpos[i]
            if contacts:
                contacts2.append(_contact_pairs(data))
            if vases is not None:
                for k, body in enumerate(vases):
                    speed[i, k] = np.sqrt(np.sum(np.square(_body_velocity(model, data, body))))
        if contacts:
            contacts1, contacts2 = _stack_contacts(contacts1), _stack_contacts(contacts2)
        return first, second, contacts1, contacts2, speed

    def _count(self, contacts: tuple, mask_of: Any) -> np.ndarray:
        """Per env, the number of contacts ``(g1, g2)`` that ``mask_of(env, g1, g2)`` selects."""
        envs, g1, g2 = contacts
        return np.bincount(envs[mask_of(envs, g1, g2)], minlength=self._n)

    def _agent_contact(self, g1: np.ndarray, g2: np.ndarray) -> np.ndarray:
        agent = self._index.agent_geom
        return agent[g1] | agent[g2]

    def _pressed(self, tasks: list, contacts: Any) -> np.ndarray:
        """``ButtonLevel0.goal_achieved``: a contact of the goal button with the agent."""
        goal_button = np.array([t.buttons.goal_button for t in tasks], dtype=np.int64)
        button = self._index.button_of_geom

        def pressed(envs, g1, g2):
            goal = (button[g1] == goal_button[envs]) | (button[g2] == goal_button[envs])
            return goal & self._agent_contact(g1, g2)

        return self._count(contacts, pressed) > 0

    def _achieved(
        self, tasks: list, xpos: np.ndarray, agent_pos: np.ndarray, contacts: Any
    ) -> np.ndarray:
        """``task.goal_achieved`` (as ``Builder.step`` reads it, after the cost's forward)."""
        family, index = self._family, self._index
        if family == "goal":
            dist = kernels.dist_xy(xpos[:, index.bodies["goal"][0]], agent_pos)
            return dist <= self._obstacles["goal"].size
        if family == "button":
            return self._pressed(tasks, contacts)
        if family == "push":
            box = xpos[:, index.bodies["push_box"][0]]
            goal = xpos[:, index.bodies["goal"][0]]
            return kernels.dist_xyz(box, goal) <= self._obstacles["goal"].size
        return np.zeros(self._n, dtype=bool)

    def _reward(
        self, tasks: list, xpos: np.ndarray, agent_pos: np.ndarray, contacts: Any, speed: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        family, index, n = self._family, self._index, self._n
        if family in ("goal", "button"):
            conf = self._obstacles["goal" if family == "goal" else "buttons"]
            dist = kernels.dist_xy(xpos[:, index.bodies["goal"][0]], agent_pos)
            last = np.array([t.last_dist_goal for t in tasks], dtype=np.float64)
            reward = 0.0 + (last - dist) * conf.reward_distance
            for i, task in enumerate(tasks):
                task.last_dist_goal = dist[i]
            if family == "goal":
                achieved = dist <= self._obstacles["goal"].size
            else:
                achieved = self._pressed(tasks, contacts)
            reward = np.where(achieved, reward + conf.reward_goal, reward)
        elif family == "push":
            box_conf, goal_conf = self._obstacles["push_box"], self._obstacles["goal"]
            box = xpos[:, index.bodies["push_box"][0]]
            goal = xpos[:, index.bodies["goal"][0]]
            dist_box = kernels.dist_xyz(box, agent_pos)
            last_box = np.array([t.last_dist_box for t in tasks], dtype=np.float64)
            gate = last_box > box_conf.null_dist * box_conf.size
            reward = 0.0 + (last_box - dist_box) * box_conf.reward_box_dist * gate
            dist_box_goal = kernels.dist_xyz(box, goal)
            last_box_goal = np.array([t.last_box_goal for t in tasks], dtype=np.float64)
            reward = reward + (last_box_goal - dist_box_goal) * box_conf.reward_box_goal
            for i, task in enumerate(tasks):
                task.last_dist_box = dist_box[i]
                task.last_box_goal = dist_box_goal[i]
            achieved = dist_box_goal <= goal_conf.size
            reward = np.where(achieved, reward + goal_conf.reward_goal, reward)
        else:  # circle: the agent's J(q) qvel, and numpy-scalar x ** 2 (libm pow)
            reward = np.empty(n)
            radius_goal = self._obstacles["circle"].radius
            for i, task in enumerate(tasks):
                u, v, _ = speed[i, :3]
                x, y, _ = agent_pos[i]
                radius = np.sqrt(x**2 + y**2)
                reward[i] = (
                    0.0
                    + (((-u * y + v * x) / radius) / (1 + np.abs(radius - radius_goal)))
                    * task.reward_factor
                )
            achieved = np.zeros(n, dtype=bool)
        clip = self._reward_clip
        if clip:
            outside = ~((-clip < reward) & (reward < clip))
            if outside.any():
                reward = np.where(outside, np.clip(reward, -clip, clip), reward)
                for _ in range(int(outside.sum())):
                    print("Warning: reward was outside of range!")
        return reward, achieved

    def _cost(
        self, tasks: list, xpos: np.ndarray, agent_pos: np.ndarray, contacts: Any, speed: Any
    ) -> np.ndarray:
        """``Builder._cost()['cost_sum']``: the obstacles' terms summed in the stock dict's order."""
        index, n = self._index, self._n
        terms = []
        for name, obstacle in self._obstacles.items():
            kind = type(obstacle).__name__
            if not getattr(obstacle, "is_constrained", False):
                continue
            if kind == "Hazards":
                # 0 += cost * (size - d) per hazard within reach: a left-to-right cumsum (adding
                # 0.0 for the others changes no bits: all terms are >= +0)
                dist = kernels.dist_xy(xpos[:, index.bodies[name]], agent_pos[:, None])
                hit = dist <= obstacle.size
                term = np.where(hit, obstacle.cost * (obstacle.size - dist), 0.0)
                terms.append(np.cumsum(term, axis=1)[:, -1] if term.shape[1] else np.zeros(n))
            elif kind == "Sigwalls":
                out = np.abs(agent_pos[:, 0]) > obstacle.locate_factor
                if obstacle.num == 4:
                    out = out | (np.abs(agent_pos[:, 1]) > obstacle.locate_factor)
                terms.append(out.astype(np.float64))
            elif kind in CONTACT_PREFIX:
                terms.extend(self._contact_cost(tasks, obstacle, contacts, speed))
        total = kernels.sequential_sum(terms, n)  # calculate_cost's cost_sum, of the raw terms
        if self._indicator:  # Builder._cost then maps every entry, cost_sum too, to float(x > 0)
            total = (total > 0.0).astype(np.float64)
        return total

    def _contact_cost(self, tasks: list, obstacle: Any, contacts: Any, speed: Any) -> list:
        kind = type(obstacle).__name__
        prefix = self._index.prefix_geom[CONTACT_PREFIX[kind]]

        def touching(envs, g1, g2):
            return (prefix[g1] | prefix[g2]) & self._agent_contact(g1, g2)

        if kind == "Buttons":  # only while the timer is 0; the goal button is no violation
            active = np.array([t.buttons.timer == 0 for t in tasks])
            goal_button = np.array([t.buttons.goal_button for t in tasks], dtype=np.int64)
            button = self._index.button_of_geom

            def wrong(envs, g1, g2):
                goal = (button[g1] == goal_button[envs]) | (button[g2] == goal_button[envs])
                return touching(envs, g1, g2) & ~goal & active[envs]

            return [kernels.repeated_add(self._count(contacts, wrong), obstacle.cost)]
        if kind in ("Pillars", "Gremlins"):
            value = obstacle.cost if kind == "Pillars" else obstacle.contact_cost
            return [kernels.repeated_add(self._count(contacts, touching), value)]
        # Vases: contact, (displacement: refused), velocity
        terms = []
        if obstacle.contact_cost:
            terms.append(
                kernels.repeated_add(self._count(contacts, touching), obstacle.contact_cost)
            )
        if obstacle.velocity_cost:  # speeds from _physics (get_body_xvelp after the 2nd forward)
            total = np.zeros(self._n)
            for k in range(obstacle.num):
                fast = speed[:, k] >= obstacle.velocity_threshold
                total = np.where(fast, total + speed[:, k] * obstacle.velocity_cost, total)
            terms.append(total)
        return terms

    @staticmethod
    def _goal_met(builder: Any, task: Any) -> None:
        """``Builder.step``'s goal processing, verbatim."""
        from safety_gymnasium.utils.common_utils import ResamplingError

        if task.mechanism_conf.continue_goal:
            task.update_layout()
            if task.mechanism_conf.terminate_resample_failure:
                try:
                    task.update_world()
                except ResamplingError:
                    builder.terminated = True
            else:
                task.update_world()
        else:
            builder.terminated = True

    def _obs(
        self, tasks: list, xpos: np.ndarray, agent_pos: np.ndarray, agent_mat: np.ndarray
    ) -> np.ndarray:
        layout, index, n = self._layout, self._index, self._n
        sensordata = np.stack(self._sensordata)
        out = np.zeros((n, layout.dim))
        out[:, layout.copy_cols] = sensordata[:, layout.copy_src]
        if layout.sincos:
            cols = np.array([c for c, _ in layout.sincos])
            theta = sensordata[:, [adr for _, adr in layout.sincos]]
            out[:, cols] = np.sin(theta)
            out[:, cols + 1] = np.cos(theta)
        for col, adr in layout.quat2mat:
            for i in range(n):
                out[i, col : col + 9] = quat2mat(sensordata[i, adr : adr + 4])
        conf = self._lidar
        if layout.lidar:
            if conf.type == "pseudo":
                ego = kernels.ego_xy(xpos[:, index.lidar_bodies], agent_pos, agent_mat)
                kernels.pseudo_lidar(
                    ego,
                    out.reshape(-1),
                    self._lidar_index,
                    conf.num_bins,
                    conf.max_dist,
                    conf.exp_gain,
                    conf.alias,
                )
            else:  # natural lidar casts rays (mj_ray) per env: stock code
                for name, col in layout.lidar.items():
                    group = self._obstacles[name].group
                    for i, task in enumerate(tasks):
                        out[i, col : col + conf.num_bins] = task._obs_lidar_natural(group)
            col = layout.lidar.get("buttons")
            if col is not None:  # ButtonLevel0.obs: zero button lidar while the timer runs
                waiting = np.array([t.buttons.timer != 0 for t in tasks])
                out[waiting, col : col + conf.num_bins] = 0.0
        for name, col in layout.compass.items():
            shape = tasks[0].compass_conf.shape
            pos = xpos[:, index.bodies[name][0]]
            out[:, col : col + shape] = kernels.compass(pos, agent_pos, agent_mat, shape)
        return out


def _body_velocity(model: Any, data: Any, body: int) -> np.ndarray:
    """``safety_gymnasium.utils.task_utils.get_body_xvelp`` by body id."""
    jacp = np.zeros(3 * model.nv).reshape(3, model.nv)
    mujoco.mj_jacBody(model, data, jacp, None, body)
    return np.dot(jacp, data.qvel)


def _contact_pairs(data: Any) -> tuple[np.ndarray, np.ndarray]:
    """Copies of ``(geom1, geom2)`` of the active contacts (the next forward overwrites them)."""
    if not data.ncon:
        return _EMPTY, _EMPTY
    contact = data.contact
    return np.array(contact.geom1, dtype=np.int64), np.array(contact.geom2, dtype=np.int64)


def _stack_contacts(pairs: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-env contact pairs -> ``(env, geom1, geom2)`` of all envs."""
    envs = [np.full(len(g1), i, dtype=np.int64) for i, (g1, _) in enumerate(pairs)]
    return (
        np.concatenate(envs),
        np.concatenate([g1 for g1, _ in pairs]),
        np.concatenate([g2 for _, g2 in pairs]),
    )


_EMPTY = np.zeros(0, dtype=np.int64)
