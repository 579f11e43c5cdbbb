"""The node emulator: the sysfs/procfs/debugfs trees and GPU state files of one simulated node.

The exporter's tests read these exactly as they read a real node; the trees are rendered
from the cluster model's signals so a tree and a metric dump of the same instant agree.
"""
