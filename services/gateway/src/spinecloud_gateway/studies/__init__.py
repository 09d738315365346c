"""Studies arriving from Orthanc: recording, routing to models, the /changes poller."""
