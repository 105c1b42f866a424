"""The asyncio shell: tasks on one event loop carry out the core's decisions."""
