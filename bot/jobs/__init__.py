"""The job queue at work: the runner, its lanes, queue positions, and posting a job's state to Discord.

Empty on purpose: importing one module of the package (bot.db.jobs imports the fair order) must not
import the runner and its lanes.
"""
