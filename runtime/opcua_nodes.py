"""The OPC UA address space of a station and who may open a session (runtime/opcua.py)."""

from __future__ import annotations

from typing import Any, Callable

from .health import ALARMS


def _arg(name: str, type_name: str, doc: str) -> Any:
    from asyncua import ua

    a = ua.Argument()
    a.Name = name
    a.DataType = ua.NodeId(getattr(ua.ObjectIds, type_name))
    a.ValueRank = -1
    a.ArrayDimensions = []
    a.Description = ua.LocalizedText(doc)
    return a


async def build_address_space(server: Any, owner: Any, namespace: str, station: str) -> dict[str, Any]:
    """Creates the nodes; returns them by browse name (Counters and Health children included)."""
    from asyncua import ua

    from .opcua import COUNTERS, RESULT_NODES

    idx = await server.register_namespace(namespace)
    root = await server.nodes.objects.add_object(idx, station)
    nodes: dict[str, Any] = {}
    for name, _key, type_name, absent in RESULT_NODES:
        nodes[name] = await root.add_variable(idx, name, ua.Variant(absent, getattr(ua.VariantType, type_name)))
    nodes["State"] = await root.add_variable(idx, "State", ua.Variant("starting", ua.VariantType.String))
    nodes["ActiveRecipe"] = await root.add_variable(idx, "ActiveRecipe", ua.Variant("", ua.VariantType.String))
    counters = await root.add_object(idx, "Counters")
    for name in COUNTERS:
        nodes[name] = await counters.add_variable(idx, name, ua.Variant(0, ua.VariantType.UInt64))
    health = await root.add_object(idx, "Health")
    nodes["Alarms"] = await health.add_variable(idx, "Alarms", ua.Variant([], ua.VariantType.String))
    for a in ALARMS:
        nodes[a] = await health.add_variable(idx, a, ua.Variant(False, ua.VariantType.Boolean))

    async def inspect(_parent: Any, part_id: Any, request_id: Any) -> Any:
        return await owner.inspect(part_id.Value, request_id.Value)

    async def select_recipe(_parent: Any, name: Any) -> Any:
        return await owner.select_recipe(name.Value)

    await root.add_method(
        idx, "Inspect", inspect,
        [_arg("PartId", "String", "the part in front of the camera"),
         _arg("RequestId", "String", "empty: generated; a repeated id is answered once")],
        [_arg("Verdict", "String", "good, defective or error (error: treat as reject)"),
         _arg("Score", "Double", "sigmoid(logit); NaN for error"), _arg("Logit", "Double", "NaN for error"),
         _arg("Error", "String", "why there is no score; empty otherwise")])
    await root.add_method(idx, "SelectRecipe", select_recipe, [_arg("Name", "String", "a configured recipe")],
                          [_arg("Recipe", "String", "now active"), _arg("ModelHash", "String", "its model_sha256")])
    return nodes


def user_manager(allow_anonymous: bool, creds: tuple[str, str] | None, same: Callable[[Any, Any], bool]) -> Any:
    from asyncua.server.user_managers import UserManager
    try:  # asyncua 2.x
        from asyncua.crypto.permission_rules import User, UserRole
    except ImportError:  # asyncua 1.x
        from asyncua.server.users import User, UserRole

    class StationUsers(UserManager):
        def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                     certificate: Any = None) -> Any:
            if username is None:  # anonymous (certificate: the channel's, not an identity here)
                return User(role=UserRole.User) if allow_anonymous else None
            if creds is not None and username is not None and password is not None:
                ok = same(username.encode(), creds[0].encode()) & same(password.encode(), creds[1].encode())
                return User(role=UserRole.User) if ok else None
            return None

    return StationUsers()
