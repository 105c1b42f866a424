"""The tutorials' programs (../shared/seeds) run on pgreservoir.pool with only the import changed.

Each program below is the users' code as the seed documents print it, with
its psycopg2 imports and its placeholder connection parameters. The test
rewrites the imports to pgreservoir, points the connection parameters at the
test server, runs the program in a subprocess against a fresh database, and
compares its output with the same program run on psycopg2.pool. A small
harness records which pool classes the program built, to prove it really
ran on pgreservoir.

Edits beyond the import, all listed here:
* seed 000 spells the class ``psycopg2.pool.SimpleConnectionPool`` after
  ``import psycopg2``: that name is psycopg2's whatever ``pool`` is bound
  to, so ``psycopg2.pool.`` becomes ``pool.`` (see docs/psycopg2-compat.md).
* two long lines are wrapped inside their parentheses (line length only).
* seed 001's transaction example unpacks ``(cursor, _)`` and then uses
  ``conn``, a NameError with either pool; it unpacks ``(cursor, conn)``
  here, and its usage example prints ``record['name']`` where the seed has
  an ellipsis.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List, Tuple

import psycopg2
import pytest

from pgreservoir.testing import PostgresServer

SCHEMA = """
CREATE TABLE mobile (id int PRIMARY KEY, model text, price float8);
INSERT INTO mobile VALUES (1, 'IPhone 12', 800.0), (2, 'Google Pixel 2', 900.0);
CREATE TABLE users (id serial PRIMARY KEY, name text);
INSERT INTO users (name) VALUES ('Ann'), ('Bob');
CREATE TABLE orders (id serial PRIMARY KEY, user_id int, item text);
INSERT INTO orders (user_id, item) VALUES (1, 'book'), (2, 'pen');
CREATE TABLE logs (id serial PRIMARY KEY, message text, level text);
CREATE TABLE profiles (user_id int, bio text);
"""

# Placeholder connection parameters of the seeds -> the test server's.
CONNECTION_PARAMETERS: List[Tuple[str, str]] = [
    (
        "postgresql://admin:password@localhost/testdb",
        "postgresql://{user}:password@{host}:{port}/{db}",
    ),
    (
        '"dbname=test user=postgres password=secret"',
        '"dbname={db} user={user} password=secret host={host} port={port}"',
    ),
    ('host="127.0.0.1"', 'host="{host}"'),
    ('port="5432"', 'port="{port}"'),
    ('host="localhost"', 'host="{host}", port="{port}"'),
    ('database="postgres_db"', 'database="{db}"'),
    ('database="mydb"', 'database="{db}"'),
    ('user="postgres"', 'user="{user}"'),
    ('user="myuser"', 'user="{user}"'),
]

IMPORTS: List[Tuple[str, str]] = [
    ("from psycopg2 import pool", "from pgreservoir import pool"),
    ("from psycopg2.pool import ", "from pgreservoir.pool import "),
    ("psycopg2.pool.", "pool."),  # seed 000's spelling, see the module docstring
]

# Runs a program and reports, at exit, which pool classes it instantiated.
HARNESS = textwrap.dedent(
    """
    import atexit, runpy, sys, threading
    import psycopg2.pool
    import pgreservoir.pool

    class WholeLines:
        # stdout whose lines never mix: print() writes text and newline
        # separately, so threads printing at once would interleave them.

        def __init__(self, out):
            self._out, self._lock, self._local = out, threading.Lock(), threading.local()

        def write(self, text):
            pending = getattr(self._local, "pending", "") + text
            *lines, self._local.pending = pending.split("\\n")
            if lines:
                with self._lock:
                    self._out.write("".join(line + "\\n" for line in lines))
            return len(text)

        def flush(self):
            self._out.flush()

        def __getattr__(self, name):
            return getattr(self._out, name)

    sys.stdout = WholeLines(sys.stdout)
    built = []

    def spy(module):
        original = module.AbstractConnectionPool.__init__
        def init(self, *args, **kwargs):
            built.append(f"{module.__name__}.{type(self).__name__}")
            original(self, *args, **kwargs)
        module.AbstractConnectionPool.__init__ = init

    spy(psycopg2.pool)
    spy(pgreservoir.pool)
    # Registered first, so it runs after the program's own exit hooks.
    atexit.register(lambda: print("HARNESS built", sorted(set(built))))
    sys.path.insert(0, sys.argv[1])
    runpy.run_path(sys.argv[2], run_name="__main__")
    """
)

SEED_000_SIMPLE = '''
import psycopg2
from psycopg2 import pool
try:
    # Connect to an existing database
    postgresql_pool = psycopg2.pool.SimpleConnectionPool(1, 20,
        user="postgres",
        # password you used when you installed PostgreSQL
        password="1111",
        host="127.0.0.1",
        port="5432",
        database="postgres_db")
    if postgresql_pool:
        print("The connection pool was created successfully.")
    # Use getconn() to get a connection from the connection pool.
    connection = postgresql_pool.getconn()
    if connection:
        print("Connection established")
        cursor = connection.cursor()
        cursor.execute("select * from mobile")
        mobile_records = cursor.fetchall()
        print ("Display rows from the mobile table")
        for row in mobile_records:
            print(row)
        cursor.close()
        # use this method to let go of the connection object
        # and send it back to the connection pool
        postgresql_pool.putconn(connection)
        print("PostgreSQL connection returned to the pool")
except (Exception, psycopg2.DatabaseError) as error :
    print ("Error connecting to PostgreSQL", error)
finally:
    if postgresql_pool:
        postgresql_pool.closeall
    print("PostgreSQL connection pool closed")
'''

SEED_000_THREADED = SEED_000_SIMPLE.replace(
    "psycopg2.pool.SimpleConnectionPool(1, 20,", "psycopg2.pool.ThreadedConnectionPool(5, 20,"
)

SEED_001_DB_HELPER = '''
from psycopg2 import pool
from psycopg2.extras import RealDictCursor
from contextlib import contextmanager
import atexit

class DBHelper:
    def __init__(self):
        self._connection_pool = None

    def initialize_connection_pool(self):
        db_dsn = 'postgresql://admin:password@localhost/testdb?connect_timeout=5'
        self._connection_pool = pool.ThreadedConnectionPool(1, 3, db_dsn)

    @contextmanager
    def get_resource(self, autocommit=True):
        if self._connection_pool is None:
            self.initialize_connection_pool()

        conn = self._connection_pool.getconn()
        conn.autocommit = autocommit
        cursor = conn.cursor(cursor_factory=RealDictCursor)
        try:
            yield cursor, conn
        finally:
            cursor.close()
            self._connection_pool.putconn(conn)

    def shutdown_connection_pool(self):
        if self._connection_pool is not None:
            self._connection_pool.closeall()

db_helper = DBHelper()

@atexit.register
def shutdown_connection_pool():
    db_helper.shutdown_connection_pool()
'''

SEED_001_KEEPALIVES = SEED_001_DB_HELPER.replace(
    "pool.ThreadedConnectionPool(1, 3, db_dsn)",
    "pool.ThreadedConnectionPool(1, 3, db_dsn, keepalives=1, keepalives_idle=30,"
    " keepalives_interval=10, keepalives_count=5)",
)

SEED_001_USAGE = '''
from db_helper import db_helper

with db_helper.get_resource() as (cursor, _):
    cursor.execute('select * from users')
    for record in cursor.fetchall():
        print(record['name'])

with db_helper.get_resource(autocommit=False) as (cursor, conn):
    try:
        cursor.execute('update users set name = %s where id = %s', ('new_name', 1))
        cursor.execute('delete from orders where user_id = %s', (1,))
        conn.commit()
    except:
        conn.rollback()

with db_helper.get_resource() as (cursor, _):
    cursor.execute('select u.name, count(o.id) as orders from users u'
                   ' left join orders o on o.user_id = u.id group by u.name order by 1')
    for record in cursor.fetchall():
        print(record['name'], record['orders'])
    cursor.execute('show tcp_keepalives_idle')
'''

SEED_002_SIMPLE = '''
import psycopg2
from psycopg2.pool import SimpleConnectionPool
# Create connection pool
pool = SimpleConnectionPool(
    minconn=1,
    maxconn=5,
    host="localhost",
    database="mydb",
    user="myuser",
    password="mypass"
)
# Get connection from pool
conn = pool.getconn()
try:
    with conn.cursor() as cur:
        cur.execute("SELECT * FROM users")
        users = cur.fetchall()
    # Connection is still open, can be reused
    with conn.cursor() as cur:
        cur.execute("INSERT INTO logs (message) VALUES (%s)", ("User query",))
    conn.commit()
finally:
    # Return connection to pool (don't close it)
    pool.putconn(conn)
# Get another connection (might be the same one)
conn2 = pool.getconn()
with conn2.cursor() as cur:
    cur.execute("SELECT COUNT(*) FROM users")
    count = cur.fetchone()[0]
    print(f"Total users: {count}")
pool.putconn(conn2)
# Clean up - close all connections
pool.closeall()
'''

SEED_002_WORKERS = '''
import psycopg2
import threading
import time
from psycopg2.pool import ThreadedConnectionPool
# Create thread-safe pool
pool = ThreadedConnectionPool(
    minconn=2,
    maxconn=10,
    host="localhost",
    database="mydb",
    user="myuser",
    password="mypass"
)
def worker_function(worker_id):
    """Worker function for multi-threading."""
    try:
        # Get connection (thread-safe)
        conn = pool.getconn()
        print(f"Worker {worker_id} got connection")
        with conn.cursor() as cur:
            # Simulate work
            cur.execute("SELECT pg_sleep(1)")
            cur.execute("SELECT %s as worker_id", (worker_id,))
            result = cur.fetchone()
            print(f"Worker {worker_id} completed: {result[0]}")
    except Exception as e:
        print(f"Worker {worker_id} error: {e}")
    finally:
        # Always return connection to pool
        pool.putconn(conn)
        print(f"Worker {worker_id} returned connection")
# Create multiple threads
threads = []
for i in range(5):
    thread = threading.Thread(target=worker_function, args=(i,))
    threads.append(thread)
    thread.start()
# Wait for all threads to complete
for thread in threads:
    thread.join()
print("All workers completed")
pool.closeall()
'''

SEED_002_MANAGED = '''
import psycopg2
from psycopg2.pool import ThreadedConnectionPool, PoolError
import contextlib
import logging
# Configure logging
logging.basicConfig(level=logging.INFO)
logger = logging.getLogger(__name__)
class ManagedConnectionPool:
    """Wrapper for enhanced pool management."""
    def __init__(self, minconn, maxconn, **db_params):
        self.pool = ThreadedConnectionPool(minconn, maxconn, **db_params)
        self.logger = logger
    @contextlib.contextmanager
    def get_connection(self):
        """Context manager for automatic connection handling."""
        conn = None
        try:
            conn = self.pool.getconn()
            self.logger.info("Connection acquired from pool")
            yield conn
        except PoolError as e:
            self.logger.error(f"Pool error: {e}")
            raise
        except Exception as e:
            if conn:
                conn.rollback()
            self.logger.error(f"Database error: {e}")
            raise
        finally:
            if conn:
                self.pool.putconn(conn)
                self.logger.info("Connection returned to pool")
    def execute_query(self, query, params=None):
        """Execute query with automatic connection management."""
        with self.get_connection() as conn:
            with conn.cursor() as cur:
                cur.execute(query, params)
                if cur.description:  # SELECT query
                    return cur.fetchall()
                else:  # INSERT/UPDATE/DELETE
                    conn.commit()
                    return cur.rowcount
    def close(self):
        """Close all pool connections."""
        self.pool.closeall()
        self.logger.info("Pool closed")
# Usage
managed_pool = ManagedConnectionPool(
    minconn=2,
    maxconn=8,
    host="localhost",
    database="mydb",
    user="myuser",
    password="mypass"
)
try:
    # Simple query execution
    users = managed_pool.execute_query("SELECT id, name FROM users LIMIT 5")
    for user in users:
        print(f"User: {user[1]}")
    # Insert with parameters
    rows_affected = managed_pool.execute_query(
        "INSERT INTO logs (message, level) VALUES (%s, %s)",
        ("Application started", "INFO")
    )
    print(f"Inserted {rows_affected} rows")
    # Using context manager directly
    with managed_pool.get_connection() as conn:
        with conn.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("INSERT INTO users (name) VALUES (%s)", ("Alice",))
            cur.execute("INSERT INTO profiles (user_id, bio) VALUES (currval('users_id_seq'), %s)",
                        ("Bio",))
            conn.commit()
finally:
    managed_pool.close()
'''

SEED_002_MONITORED = '''
import psycopg2
from psycopg2.pool import ThreadedConnectionPool
import threading
import time
class MonitoredPool:
    """Connection pool with monitoring capabilities."""
    def __init__(self, minconn, maxconn, **db_params):
        self.pool = ThreadedConnectionPool(minconn, maxconn, **db_params)
        self.stats = {
            'connections_created': 0,
            'connections_borrowed': 0,
            'connections_returned': 0,
            'active_connections': 0
        }
        self._lock = threading.Lock()
    def getconn(self, key=None):
        """Get connection with stats tracking."""
        with self._lock:
            self.stats['connections_borrowed'] += 1
            self.stats['active_connections'] += 1
        conn = self.pool.getconn(key)
        # Test connection health
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
        except psycopg2.Error:
            # Connection is bad, close it and get a new one
            self.pool.putconn(conn, close=True)
            conn = self.pool.getconn(key)
            with self._lock:
                self.stats['connections_created'] += 1
        return conn
    def putconn(self, conn, key=None, close=False):
        """Return connection with stats tracking."""
        self.pool.putconn(conn, key, close)
        with self._lock:
            self.stats['connections_returned'] += 1
            self.stats['active_connections'] -= 1
    def get_stats(self):
        """Get pool statistics."""
        with self._lock:
            return self.stats.copy()
    def health_check(self):
        """Perform pool health check."""
        try:
            conn = self.pool.getconn()
            with conn.cursor() as cur:
                cur.execute("SELECT version()")
                version = cur.fetchone()[0]
            self.pool.putconn(conn)
            return True, f"Pool healthy - {version}"
        except Exception as e:
            return False, f"Pool unhealthy - {e}"
    def closeall(self):
        """Close all connections."""
        self.pool.closeall()
# Usage
monitored_pool = MonitoredPool(
    minconn=2,
    maxconn=6,
    host="localhost",
    database="mydb",
    user="myuser",
    password="mypass"
)
# Simulate usage
def simulate_work():
    conn = monitored_pool.getconn()
    time.sleep(0.1)  # Simulate work
    monitored_pool.putconn(conn)
# Run multiple workers
threads = [threading.Thread(target=simulate_work) for _ in range(10)]
for t in threads:
    t.start()
for t in threads:
    t.join()
# Check stats
stats = monitored_pool.get_stats()
print(f"Pool stats: {stats}")
# Health check
healthy, message = monitored_pool.health_check()
print(f"Health check: {message}")
monitored_pool.closeall()
'''

SEED_002_RESILIENT = '''
import psycopg2
from psycopg2.pool import ThreadedConnectionPool, PoolError
import time
import logging
logger = logging.getLogger(__name__)
class ResilientPool:
    """Connection pool with error recovery."""
    def __init__(self, minconn, maxconn, **db_params):
        self.minconn = minconn
        self.maxconn = maxconn
        self.db_params = db_params
        self.pool = None
        self._create_pool()
    def _create_pool(self):
        """Create or recreate pool."""
        try:
            if self.pool:
                self.pool.closeall()
            self.pool = ThreadedConnectionPool(
                self.minconn, self.maxconn, **self.db_params
            )
            logger.info("Pool created successfully")
        except Exception as e:
            logger.error(f"Failed to create pool: {e}")
            raise
    def get_connection(self, retry_count=3):
        """Get connection with retry logic."""
        for attempt in range(retry_count):
            try:
                if not self.pool:
                    self._create_pool()
                conn = self.pool.getconn()
                # Test connection
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
                return conn
            except PoolError as e:
                logger.warning(f"Pool exhausted (attempt {attempt + 1}): {e}")
                if attempt < retry_count - 1:
                    time.sleep(0.1 * (attempt + 1))  # Exponential backoff
                else:
                    raise
            except psycopg2.OperationalError as e:
                logger.error(f"Database connection error (attempt {attempt + 1}): {e}")
                if attempt < retry_count - 1:
                    # Try to recreate pool
                    self._create_pool()
                    time.sleep(0.5 * (attempt + 1))
                else:
                    raise
    def return_connection(self, conn, close_on_error=True):
        """Return connection with error handling."""
        try:
            if conn.closed:
                logger.warning("Returning closed connection")
                return
            # Check if connection is in a transaction
            if conn.status != 1:  # STATUS_READY
                conn.rollback()
                logger.info("Rolled back transaction before returning connection")
            self.pool.putconn(conn)
        except Exception as e:
            logger.error(f"Error returning connection: {e}")
            if close_on_error:
                try:
                    self.pool.putconn(conn, close=True)
                except:
                    pass
    def close(self):
        """Close pool."""
        if self.pool:
            self.pool.closeall()
            self.pool = None
# Usage
resilient_pool = ResilientPool(
    minconn=1,
    maxconn=5,
    host="localhost",
    database="mydb",
    user="myuser",
    password="mypass"
)
try:
    conn = resilient_pool.get_connection()
    with conn.cursor() as cur:
        cur.execute("SELECT * FROM users LIMIT 1")
        result = cur.fetchone()
        print(f"Query result: {result}")
    resilient_pool.return_connection(conn)
except Exception as e:
    print(f"Error: {e}")
finally:
    resilient_pool.close()
'''

SEED_003_SYNTAX = '''
from psycopg2 import pool

# Create a connection pool
connection_pool = pool.SimpleConnectionPool(minconn=1, maxconn=5,
                                            dsn="dbname=test user=postgres password=secret")

# Get a connection from the pool
conn = connection_pool.getconn()

# Use the connection (e.g., create cursor, execute queries)
# ...

# Return the connection to the pool
connection_pool.putconn(conn)

# Close all connections when done
connection_pool.closeall()
'''

SEED_003_VERSION = '''
from psycopg2 import pool

# Initialize connection pool
connection_pool = pool.SimpleConnectionPool(1, 3, dsn="dbname=test user=postgres password=secret")

try:
    # Get connection from pool
    conn = connection_pool.getconn()
    cursor = conn.cursor()

    # Execute a query
    cursor.execute("SELECT version();")
    version = cursor.fetchone()
    print(f"PostgreSQL version: {version[0]}")

    # Close cursor
    cursor.close()

finally:
    # Return connection to pool
    connection_pool.putconn(conn)

# Close all connections
connection_pool.closeall()
'''

SEED_003_PITFALL = '''
from psycopg2 import pool

# Wrong: Not returning connection to pool
connection_pool = pool.SimpleConnectionPool(1, 2, dsn="dbname=test user=postgres password=secret")
conn = connection_pool.getconn()
cursor = conn.cursor()
cursor.execute("SELECT 1")
print(cursor.fetchone())
cursor.close()
# Missing: connection_pool.putconn(conn) leads to connection leak

# Right: Always return connection
connection_pool.putconn(conn)
'''

# name -> (files, main file, lines the output must contain, pool classes built)
SEEDS: Dict[str, Tuple[Dict[str, str], str, List[str], List[str]]] = {
    "000-simple": (
        {"main.py": SEED_000_SIMPLE}, "main.py",
        ["(1, 'IPhone 12', 800.0)", "(2, 'Google Pixel 2', 900.0)",
         "PostgreSQL connection returned to the pool"],
        ["SimpleConnectionPool"],
    ),
    "000-threaded": (
        {"main.py": SEED_000_THREADED}, "main.py",
        ["(1, 'IPhone 12', 800.0)", "PostgreSQL connection pool closed"],
        ["ThreadedConnectionPool"],
    ),
    "001-db-helper": (
        {"db_helper.py": SEED_001_DB_HELPER, "main.py": SEED_001_USAGE}, "main.py",
        ["Ann", "Bob", "Bob 1", "new_name 0"],
        ["ThreadedConnectionPool"],
    ),
    "001-keepalives": (
        {"db_helper.py": SEED_001_KEEPALIVES, "main.py": SEED_001_USAGE}, "main.py",
        ["Bob 1", "new_name 0"],
        ["ThreadedConnectionPool"],
    ),
    "002-simple": (
        {"main.py": SEED_002_SIMPLE}, "main.py", ["Total users: 2"], ["SimpleConnectionPool"],
    ),
    "002-workers": (
        {"main.py": SEED_002_WORKERS}, "main.py",
        [*(f"Worker {i} completed: {i}" for i in range(5)), "All workers completed"],
        ["ThreadedConnectionPool"],
    ),
    "002-managed": (
        {"main.py": SEED_002_MANAGED}, "main.py",
        ["User: Ann", "User: Bob", "Inserted 1 rows"],
        ["ThreadedConnectionPool"],
    ),
    "002-monitored": (
        {"main.py": SEED_002_MONITORED}, "main.py",
        ["Health check: Pool healthy - PostgreSQL "],
        ["ThreadedConnectionPool"],
    ),
    "002-resilient": (
        {"main.py": SEED_002_RESILIENT}, "main.py",
        ["Query result: (1, 'Ann')"],
        ["ThreadedConnectionPool"],
    ),
    "003-syntax": ({"main.py": SEED_003_SYNTAX}, "main.py", [], ["SimpleConnectionPool"]),
    "003-version": (
        {"main.py": SEED_003_VERSION}, "main.py", ["PostgreSQL version: PostgreSQL "],
        ["SimpleConnectionPool"],
    ),
    "003-pitfall": ({"main.py": SEED_003_PITFALL}, "main.py", ["(1,)"], ["SimpleConnectionPool"]),
}

# Output lines that legitimately differ between two runs of the same program.
UNSTABLE = ("Pool stats:", "HARNESS")


def rewrite(source: str, server: PostgresServer, dbname: str, *, swap: bool) -> str:
    """Point ``source`` at the test database; with ``swap``, import pgreservoir instead."""
    values = {"host": server.host, "port": server.port, "user": server.user, "db": dbname}
    for old, new in CONNECTION_PARAMETERS:
        source = source.replace(old, new.format(**values))
    if swap:
        for old, new in IMPORTS:
            source = source.replace(old, new)
    return source


def run_seed(
    name: str, server: PostgresServer, tmp_path: Path, *, swap: bool
) -> subprocess.CompletedProcess[str]:
    """Run seed ``name`` against a fresh database with the schema; return the process."""
    files, main, _, _ = SEEDS[name]
    dsn = server.create_database()
    dbname = psycopg2.extensions.parse_dsn(dsn)["dbname"]
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(SCHEMA)
    finally:
        conn.close()
    folder = tmp_path / ("pgreservoir" if swap else "psycopg2")
    folder.mkdir()
    for filename, source in files.items():
        (folder / filename).write_text(rewrite(source, server, dbname, swap=swap))
    (folder / "harness.py").write_text(HARNESS)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    try:
        return subprocess.run(
            [sys.executable, str(folder / "harness.py"), str(folder), str(folder / main)],
            capture_output=True, text=True, timeout=120, env=env, check=False,
        )
    finally:
        server.drop_database(dbname)


def stable_lines(output: str) -> List[str]:
    return sorted(line for line in output.splitlines() if not line.startswith(UNSTABLE))


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_seed_runs_unchanged_on_pgreservoir(
    name: str, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    _, _, expected, classes = SEEDS[name]
    ours = run_seed(name, postgres_server, tmp_path, swap=True)
    theirs = run_seed(name, postgres_server, tmp_path, swap=False)
    assert ours.returncode == 0, ours.stderr
    assert theirs.returncode == 0, theirs.stderr
    for line in expected:
        assert any(out.startswith(line) for out in ours.stdout.splitlines()), (line, ours.stdout)
    # The same output as on psycopg2.pool (thread interleavings aside).
    assert stable_lines(ours.stdout) == stable_lines(theirs.stdout)
    # It really ran on pgreservoir, and psycopg2's run on psycopg2.
    built = [f"pgreservoir.pool.{cls}" for cls in classes]
    assert f"HARNESS built {built}" in ours.stdout
    assert f"HARNESS built {[b.replace('pgreservoir', 'psycopg2') for b in built]}" in theirs.stdout
    # No traceback or error at exit that psycopg2's run did not have too.
    if "Traceback" not in theirs.stderr:
        assert "Traceback" not in ours.stderr, ours.stderr


# -- examples/: each seed pattern beside its pgreservoir replacement -------------------

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("[0-9]*.py")))
def test_example_runs(example: str, postgres_dsn: str) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / example), postgres_dsn],
        capture_output=True, text=True, timeout=120, env=env, check=False, cwd=EXAMPLES,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip(), "an example prints what it found"
    assert "Traceback" not in result.stderr, result.stderr


def test_every_example_is_listed_in_the_readme() -> None:
    examples = sorted(EXAMPLES.glob("[0-9]*.py"))
    assert len(examples) >= 6, f"examples missing from {EXAMPLES}"
    readme = (EXAMPLES / "README.md").read_text()
    for path in examples:
        assert path.name in readme, path.name
