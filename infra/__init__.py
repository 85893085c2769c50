"""How the real parts start: embedded broker, topics, Flink connector jars, cluster files."""
