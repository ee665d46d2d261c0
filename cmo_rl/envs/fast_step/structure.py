"""What the batched step reads from a built navigation scene, and where it writes it.

:class:`SceneIndex` holds one built MuJoCo model's ids (bodies, geoms, sensors, mocaps) that a
task's obs/reward/cost code looks up by name on every stock step; it is rebuilt whenever a
sub-env's scene is (every reset rebuilds the model). :class:`ObsLayout` maps each entry of the
task's (flattened) observation space to its columns and its source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import mujoco
import numpy as np

#: Internal to :class:`~cmo_rl.envs.fast_step.NavigationStepper`: no public names.
__all__: list[str] = []

#: Obstacle classes whose positions stock reads from bodies (``obstacle.pos``), by body names.
_BODY_NAMES = {
    "Goal": lambda o: ["goal"],
    "PushBox": lambda o: ["push_box"],
    "Hazards": lambda o: [f"hazard{i}" for i in range(o.num)],
    "Vases": lambda o: [f"vase{i}" for i in range(o.num)],
    "Pillars": lambda o: [f"pillar{i}" for i in range(o.num)],
    "Buttons": lambda o: [f"button{i}" for i in range(o.num)],
    "Gremlins": lambda o: [f"gremlin{i}obj" for i in range(o.num)],
    "Circle": lambda o: [None],  # Circle.pos is the constant origin
    "Sigwalls": lambda o: [],  # never lidar-observed (refused otherwise); cost reads the agent
}
SUPPORTED_OBSTACLES = frozenset(_BODY_NAMES)
#: Contact-counting costs: obstacle class -> geom-name prefix stock matches with startswith.
CONTACT_PREFIX = {"Pillars": "pillar", "Vases": "vase", "Gremlins": "gremlin", "Buttons": "button"}


def body_names(obstacle: Any) -> list[str | None]:
    return _BODY_NAMES[type(obstacle).__name__](obstacle)


@dataclass
class SceneIndex:
    """Name lookups of one built scene, as integer ids (``None`` body = the constant origin)."""

    agent: int
    lidar_bodies: np.ndarray  # [K] body ids of every lidar-observed object, in obs order
    bodies: dict[str, np.ndarray]  # obstacle name -> body ids
    mocap_ids: np.ndarray  # gremlin mocap ids, in stock's move() order
    agent_geom: np.ndarray  # [ngeom] bool: geom name in agent.body_info.geom_names
    prefix_geom: dict[str, np.ndarray]  # prefix -> [ngeom] bool (name.startswith(prefix))
    button_of_geom: np.ndarray  # [ngeom] j where the geom is named f"button{j}", else -1
    sensor_adr: dict[str, int]
    signature: tuple = field(repr=False)

    @classmethod
    def build(cls, task: Any) -> SceneIndex:
        model = task.model
        origin = model.nbody  # a zero row appended to the gathered body positions

        def body_id(name: str | None) -> int:
            return origin if name is None else model.body(name).id

        lidar, bodies = [], {}
        for obstacle in task._obstacles:
            ids = np.array([body_id(b) for b in body_names(obstacle)], dtype=np.int64)
            bodies[obstacle.name] = ids
            if obstacle.is_lidar_observed:
                lidar.extend(ids.tolist())
        mocaps = []
        for mocap in task._mocaps.values():
            for i in range(mocap.num):
                mocaps.append(model.body_mocapid[model.body(f"gremlin{i}mocap").id])
        names = [model.geom(g).name for g in range(model.ngeom)]
        agent_names = set(task.agent.body_info.geom_names)
        button = np.full(len(names), -1, dtype=np.int64)
        for g, name in enumerate(names):
            if name.startswith("button") and name[6:].isdigit() and str(int(name[6:])) == name[6:]:
                button[g] = int(name[6:])
        sensor_adr = {model.sensor(s).name: int(model.sensor_adr[s]) for s in range(model.nsensor)}
        index = cls(
            agent=model.body("agent").id,
            lidar_bodies=np.array(lidar, dtype=np.int64),
            bodies=bodies,
            mocap_ids=np.array(mocaps, dtype=np.int64),
            agent_geom=np.array([n in agent_names for n in names], dtype=bool),
            prefix_geom={
                p: np.array([n.startswith(p) for n in names], dtype=bool)
                for p in CONTACT_PREFIX.values()
            },
            button_of_geom=button,
            sensor_adr=sensor_adr,
            signature=(),
        )
        index.signature = (
            model.nbody,
            model.ngeom,
            model.nsensordata,
            index.agent,
            tuple(lidar),
            tuple((k, tuple(v.tolist())) for k, v in bodies.items()),
            tuple(mocaps),
            tuple(names),
            tuple(sorted(sensor_adr.items())),
        )
        return index


@dataclass
class ObsLayout:
    """Columns of the flat observation: each entry of ``obs_space_dict`` in its order.

    ``copy``: ``(columns, sensordata indices)``; ``sincos``: hinge angles (``sin`` then
    ``cos``); ``quat2mat``: ball-joint quaternions as 3x3 matrices; ``lidar``: obstacle name ->
    first column (pseudo lidar, or natural lidar per env); ``compass``: obstacle name -> column.
    """

    dim: int
    copy_cols: np.ndarray
    copy_src: np.ndarray
    sincos: list[tuple[int, int]]  # (column, sensordata index)
    quat2mat: list[tuple[int, int]]  # (column, sensordata index)
    lidar: dict[str, int]
    compass: dict[str, int]

    @classmethod
    def build(cls, task: Any, index: SceneIndex) -> ObsLayout:
        agent = task.agent
        info, conf = agent.sensor_info, agent.sensor_conf
        spaces = task.obs_info.obs_space_dict.spaces
        plain = set(conf.sensors) | set(info.hinge_vel_names) | set(info.ballangvel_names)
        plain.add(info.freejoint_qvel_name)
        if not conf.sensors_angle_components:
            plain |= set(info.hinge_pos_names) | set(info.ballquat_names)
        lidar_names = {o.name + "_lidar": o.name for o in task._obstacles if o.is_lidar_observed}
        comp_names = {
            o.name + "_comp": o.name
            for o in task._obstacles
            if getattr(o, "is_comp_observed", False)
        }
        copy_cols, copy_src, sincos, quat, lidar, comp = [], [], [], [], {}, {}
        col = 0
        for key, space in spaces.items():
            size = int(np.prod(space.shape))
            if key in plain:
                adr = index.sensor_adr[key]
                copy_cols.extend(range(col, col + size))
                copy_src.extend(range(adr, adr + size))
            elif key == info.freejoint_pos_name:  # get_sensor(name)[2:]
                adr = index.sensor_adr[key] + 2
                copy_cols.extend(range(col, col + size))
                copy_src.extend(range(adr, adr + size))
            elif key in info.hinge_pos_names:
                sincos.append((col, index.sensor_adr[key]))
            elif key in info.ballquat_names:
                quat.append((col, index.sensor_adr[key]))
            elif key in lidar_names:
                lidar[lidar_names[key]] = col
            elif key in comp_names:
                comp[comp_names[key]] = col
            else:
                raise ValueError(f"observation entry {key!r} has no fast-step source")
            col += size
        return cls(
            dim=col,
            copy_cols=np.array(copy_cols, dtype=np.int64),
            copy_src=np.array(copy_src, dtype=np.int64),
            sincos=sincos,
            quat2mat=quat,
            lidar=lidar,
            compass=comp,
        )


def quat2mat(quat: np.ndarray) -> np.ndarray:
    """``safety_gymnasium.utils.task_utils.quat2mat`` (MuJoCo's ``mju_quat2Mat``), flat [9]."""
    q = np.array(quat, dtype="float64")
    m = np.zeros(9, dtype="float64")
    mujoco.mju_quat2Mat(m, q)
    return m
