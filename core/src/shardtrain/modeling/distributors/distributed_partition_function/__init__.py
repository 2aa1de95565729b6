"""The vendor's ``distributed_partition_function`` package path, for its status names only
(``...distributed_partition_function.entities.RunStatus``); the work is in ``many_model``."""
