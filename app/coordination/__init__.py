"""Coordination between the instances of a service: leases with fencing tokens (`leases`), records
only the lease holder can write (`fencing`), and the jobs that run on one instance at a time, such
as the delayed-message movers (`scheduling`). See docs/coordination.md."""

from app.coordination.fencing import FencedRecord
from app.coordination.leases import Lease, Leases, Singleton, leader, singleton

__all__ = ["FencedRecord", "Lease", "Leases", "Singleton", "leader", "singleton"]
