"""The upload area: listing UPLOAD_URI (`uploads`) and the partition key of each file (`keys`).

Plain Python: the sensor, `opentr run` and the tests read uploads through here.
"""
