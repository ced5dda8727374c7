"""Running the training loop on one worker or many: the driver, the worker, where the
workers run (in this process, or Ray actors), and the communication backends.  The only
package that imports ray (lazily, so that importing distnn does not start or need it,
and a one-worker run never does)."""
