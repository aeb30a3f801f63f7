"""The upload area: listing UPLOAD_URI (`uploads`), the partition key of each file (`keys`), and
whether a file is whole yet (`settled`).

Plain Python: the sensor, `opentr run` and the tests read uploads through here.
"""
