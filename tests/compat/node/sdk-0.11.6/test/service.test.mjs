import * as adapter from '../adapter.mjs';
import { serviceSuite } from '../../lib/suites/service.mjs';

serviceSuite(adapter);
